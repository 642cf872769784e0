#!/usr/bin/env bash
# Requests/s of POST /score through the `scale` profile's load balancer with 1 and 3 API
# replicas (compose.yaml, docker/haproxy.cfg), driven by wrk on the same machine.
#
#   bash benchmarks/replicas.sh                      # from the repo root; needs wrk
#   REPLICAS="1 2 3" ROUNDS=3 DURATION=30 CANDIDATES=100 CONNECTIONS=8 bash benchmarks/replicas.sh
#
# Builds the image (not timed), brings the stack up once with DATASET=synthetic (compose's
# defaults), then for each round and each replica count in REPLICAS (alternating, so a change
# in the machine's load hits every count alike): `up -d --scale api-replica=N-1`, waits until
# the load balancer has seen N distinct replicas answer /model, warms up for 5 s, and runs
# `wrk --latency` for DURATION seconds with CONNECTIONS connections. Prints one row per run:
# replicas, requests/s, p50/p99 latency, non-2xx answers, load average. With 1 replica, also a
# run straight at the `api` service's port (no load balancer): what HAProxy costs.
# Removes its compose project and volumes at the end. wrk, HAProxy and the replicas share this
# machine's cores: the figures are for this machine, not for replicas on separate hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DOCKER_HOST:-}" ] && [ -f ../shared/containers/setup.sh ]; then
  eval "$(bash ../shared/containers/setup.sh 2>/dev/null)"
fi
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 1; }

REPLICAS=${REPLICAS:-"1 3"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-20}
CANDIDATES=${CANDIDATES:-100}
CONNECTIONS=${CONNECTIONS:-8}
export DATASET=synthetic COMPOSE_PROFILES=scale
export API_PORT=${API_PORT:-18766} LB_PORT=${LB_PORT:-18767}
project=afm-bench-replicas-$$
compose() { docker compose -p "$project" "$@"; }
work=$(mktemp -d)
trap 'compose down -v --timeout 5 >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# One request body for every call: user 1 and movies 1..CANDIDATES.
cat > "$work/score.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "${API_KEY-afm-example-key-change-me}"
local ids = {}
for i = 1, $CANDIDATES do ids[i] = tostring(i) end
wrk.body = '{"user_id": 1, "movie_ids": [' .. table.concat(ids, ",") .. ']}'
LUA

replicas_seen() {  # distinct replicas answering /model through the load balancer, in 60 calls
  for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$LB_PORT/model" 2>/dev/null | python3 -c \
      'import json, sys; print(json.load(sys.stdin)["replica"])' 2>/dev/null || true
  done | sort -u | wc -l
}
wait_for_replicas() {  # $1 replicas in rotation, or fail after 300 s
  for _ in $(seq 1 300); do
    [ "$(replicas_seen)" -ge "$1" ] && return 0
    sleep 1
  done
  echo "the load balancer did not reach $1 replicas" >&2; compose logs --tail 40 >&2; exit 1
}
measure() {  # $1 label, $2 URL
  wrk -t2 -c"$CONNECTIONS" -d5s -s "$work/score.lua" "$2/score" >/dev/null  # warm-up
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/score.lua" "$2/score")
  awk -v label="$1" -v la="$(cut -d' ' -f1-3 /proc/loadavg)" '
    /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%-26s %10s %9s %9s %8s   %s\n", label, rps, p50, p99, bad + 0, la }' <<<"$out"
}

compose build -q >/dev/null
compose down -v >/dev/null 2>&1 || true
echo "POST /score, $CANDIDATES candidates, $CONNECTIONS connections, ${DURATION}s per run"
printf "%-26s %10s %9s %9s %8s   %s\n" "run" "requests/s" "p50" "p99" "non-2xx" "load average"
for round in $(seq 1 "$ROUNDS"); do
  for n in $REPLICAS; do
    compose up -d --scale "api-replica=$((n - 1))" >/dev/null 2>&1
    wait_for_replicas "$n"
    measure "round $round: $n via HAProxy" "http://127.0.0.1:$LB_PORT"
    if [ "$n" = 1 ]; then measure "round $round: 1 direct, no LB" "http://127.0.0.1:$API_PORT"; fi
  done
done
