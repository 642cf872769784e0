#!/usr/bin/env bash
# The click loop on one machine, as docs/online.md walks through it: a model trained on
# little data serves; simulated users click by the synthetic data's planted truth; the log is
# exported and a new version trained on it (with the dataset's rows); the new version goes
# out as a 50 % canary and the judge decides; then the same with the two versions swapped.
#
#   bash benchmarks/click_loop.sh [WORK_DIR] [PORT]
#
# Needs the project's .venv and a Redis at redis://127.0.0.1:6379/0 (keys under "loop:",
# removed first). Prints each step's output; the judge's lines are the result, then the
# expected clicks of each version's ranking (benchmarks/expected_clicks.py).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/afm-click-loop}
PORT=${2:-8765}
PY=.venv/bin/python
REDIS=redis://127.0.0.1:6379/0
export AFM_REDIS_PREFIX=loop: AFM_IMPRESSION_KEYS=k1:click-loop AFM_RELOAD_INTERVAL=1
rm -rf "$W" && mkdir -p "$W"
redis-cli --scan --pattern "loop:*" | xargs -r redis-cli del > /dev/null
afm() { "$PY" -m model.cli "$@"; }
simulate() {  # its progress lines left out
    afm simulate --url "http://127.0.0.1:$PORT" --data-dir "$W/data" "$@" 2>&1 |
        grep -Ev "^[0-9]+ requests, [0-9]+ s$"
}

echo "== little data: 5 ratings per user, one epoch"
afm synth --out "$W/data" --users 2000 --movies 1000 --ratings 10000 --seed 3
afm train --dataset synthetic --data-dir "$W/data" --model-dir "$W/models" --epochs 1 2>&1 | tail -2
afm load-features --dataset synthetic --data-dir "$W/data" --redis-url "$REDIS"
if curl -sf "localhost:$PORT/healthz" > /dev/null; then echo "port $PORT is taken" >&2; exit 1; fi
"$PY" -m model.cli serve --model-dir "$W/models" --port "$PORT" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$PORT/readyz" > /dev/null && break; sleep 1; done

echo "== traffic on version 1, the log exported, version 2 trained on it and the dataset"
simulate --requests 4000 --seed 1
afm logs export --out "$W/logs" --redis-url "$REDIS" --flush 2>&1 | tail -1
afm train --from-logs "$W/logs" --dataset synthetic --data-dir "$W/data" \
    --model-dir "$W/models" --epochs 10 2>&1 | tail -2

echo "== version 2 as a 50 % canary"
afm rollout --model-dir "$W/models" --canary 2 --percent 50
sleep 3
simulate --requests 6000 --seed 2
afm rollout --model-dir "$W/models" --judge --redis-url "$REDIS"

echo "== swapped: version 2 stable, version 1 as a 50 % canary"
afm rollout --model-dir "$W/models" --rollback 2
afm rollout --model-dir "$W/models" --canary 1 --percent 50
sleep 3
simulate --requests 6000 --seed 3
afm rollout --model-dir "$W/models" --judge --redis-url "$REDIS"

echo "== where the gain comes from: version 3 on the dataset alone (to early stopping),"
echo "   version 4 on the log alone; expected clicks of each ranking under the truth"
afm train --dataset synthetic --data-dir "$W/data" --model-dir "$W/models" --epochs 10 2>&1 | tail -2
afm train --from-logs "$W/logs" --model-dir "$W/models" --epochs 10 2>&1 | tail -2
"$PY" benchmarks/expected_clicks.py --data-dir "$W/data" --model-dir "$W/models" 1 2 3 4 2>&1 | grep "|"
