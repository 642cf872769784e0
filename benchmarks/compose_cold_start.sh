#!/usr/bin/env bash
# Cold start of the compose stack: `docker compose up -d` -> first successful POST /score.
#
#   bash benchmarks/compose_cold_start.sh            # from the repo root
#
# Builds the image first (not timed), then times, on fresh volumes (nothing trained, nothing
# downloaded, empty Redis) with DATASET=synthetic and compose's defaults:
#   cold: up -d -> trainer exited 0 -> first 200 from /score
#   warm: down (volumes kept) and up -d again: the trainer finds the model, skips training
# and prints the image size. Extra environment (EPOCHS, SYNTH_RATINGS, ...) is passed through.
# On machines without Docker, ../shared/containers/setup.sh provides the CLI (run here if
# DOCKER_HOST is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DOCKER_HOST:-}" ] && [ -f ../shared/containers/setup.sh ]; then
  eval "$(bash ../shared/containers/setup.sh 2>/dev/null)"
fi

export DATASET=synthetic
export API_PORT=${API_PORT:-18765}
project=afm-bench-$$
compose() { docker compose -p "$project" "$@"; }
trap 'compose down -v --timeout 5 >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
first_score() {  # poll until /score answers 200; bounded
  for _ in $(seq 1 3000); do
    if curl -fsS -o /dev/null -X POST "http://127.0.0.1:$API_PORT/score" \
         -H 'content-type: application/json' -H "X-API-Key: ${API_KEY-afm-example-key-change-me}" \
         -d '{"user_id": 1, "movie_ids": [1, 2, 3]}'; then
      return 0
    fi
    sleep 0.1
  done
  echo "no successful /score within 300 s" >&2; compose logs --tail 40 >&2; return 1
}

compose build -q >/dev/null
compose down -v >/dev/null 2>&1 || true

start=$(now)
compose up -d >/dev/null 2>&1   # returns once the trainer has exited 0 and the API started
trained=$(since "$start")
first_score
cold=$(since "$start")

compose down >/dev/null 2>&1    # keep the volumes: model, cache and Redis data survive
start=$(now)
compose up -d >/dev/null 2>&1
first_score
warm=$(since "$start")

echo "image: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "${IMAGE:-afm-ctr:latest}")"
echo "cold start (fresh volumes, synthetic, train + load features + API): ${cold}s to first /score (up -d returned after ${trained}s)"
echo "warm start (model in volume, training skipped): ${warm}s to first /score"
