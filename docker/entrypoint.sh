#!/bin/bash
# Entry point of the afm-ctr image. The first argument picks the role:
#   serve (default)  the scoring API: `afm-ctr serve`, configured by AFM_* variables
#   train            the one-shot trainer job, below
#   train FLAGS...   the same, with extra `afm-ctr train` flags (after AFM_TRAIN_ARGS)
#   anything else    run as a command, e.g. `afm-ctr synth --out /cache/x` or `bash`
#
# The trainer job, configured by environment variables (compose.yaml sets them):
#   AFM_DATASET      ml-1m (default: downloaded once into AFM_CACHE_DIR), ml-100k or synthetic
#   AFM_DATA_DIR     an extracted dataset folder or zip to use instead of the cache (optional)
#   AFM_RETRAIN      1: train even when AFM_MODEL_DIR already holds a version (default 0: skip)
#   AFM_EPOCHS       --epochs (default: 3 for synthetic, the trainer's default otherwise)
#   AFM_TRAIN_ARGS   further `afm-ctr train` flags, e.g. "--embedding-dim 8 --protocol rating"
#   AFM_SYNTH_USERS / AFM_SYNTH_MOVIES / AFM_SYNTH_RATINGS / AFM_SYNTH_SEED
#                    size and seed of the synthetic dataset made when AFM_DATA_DIR is unset;
#                    all unset or empty: the afm-ctr defaults, made by afm-ctr in its cache
# Steps: (1) make the synthetic data if needed, (2) train and export a new version into
# AFM_MODEL_DIR unless one exists and AFM_RETRAIN is not 1, (3) always load the user features
# into Redis (a new namespace switched in atomically, so a running API never sees a mix).
set -euo pipefail

log() { echo "trainer: $*" >&2; }

# Bash as PID 1 would ignore SIGTERM: forward it to the running step and stop.
child=
trap 'log "stopping"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 143' TERM INT
run() {
  "$@" &
  child=$!
  wait "$child"
  child=
}

synthetic_data() {
  # Unset sizes take afm-ctr's defaults (model/config.py SYNTHETIC_DEFAULTS): one source.
  local users movies ratings seed
  read -r users movies ratings seed < <(python -c 'from model.config import SYNTHETIC_DEFAULTS as d
print(d["users"], d["movies"], d["ratings"], d["seed"])')
  users=${AFM_SYNTH_USERS:-$users} movies=${AFM_SYNTH_MOVIES:-$movies}
  ratings=${AFM_SYNTH_RATINGS:-$ratings} seed=${AFM_SYNTH_SEED:-$seed}
  local dir="$AFM_CACHE_DIR/synthetic-v2-u$users-m$movies-r$ratings-s$seed"  # v2: the generator's version
  if [ ! -d "$dir" ]; then
    log "making synthetic data in $dir"
    rm -rf "$dir.tmp"
    run afm-ctr synth --out "$dir.tmp" --users "$users" --movies "$movies" \
      --ratings "$ratings" --seed "$seed" >&2
    mv "$dir.tmp" "$dir"  # complete or absent, never half written
  fi
  echo "$dir"
}

latest_version() {
  python -c 'import sys; from pathlib import Path; from model.contracts.export_format import latest_version
print(latest_version(Path(sys.argv[1])) or "")' "$AFM_MODEL_DIR"
}

train_job() {
  export AFM_DATASET=${AFM_DATASET:-ml-1m}
  : "${AFM_REDIS_URL:?set AFM_REDIS_URL to the Redis that holds the user features}"
  local sizes="${AFM_SYNTH_USERS:-}${AFM_SYNTH_MOVIES:-}${AFM_SYNTH_RATINGS:-}${AFM_SYNTH_SEED:-}"
  if [ "$AFM_DATASET" = synthetic ] && [ -z "${AFM_DATA_DIR:-}" ] && [ -n "$sizes" ]; then
    AFM_DATA_DIR=$(synthetic_data)
    export AFM_DATA_DIR
  fi  # else afm-ctr makes (once) and reads its default synthetic data in AFM_CACHE_DIR

  local existing
  existing=$(latest_version)
  if [ -n "$existing" ] && [ "${AFM_RETRAIN:-0}" != 1 ]; then
    log "version $existing already in $AFM_MODEL_DIR: not training (set RETRAIN=1 to train a new one)"
  else
    local epochs=${AFM_EPOCHS:-}
    [ -z "$epochs" ] && [ "$AFM_DATASET" = synthetic ] && epochs=3
    log "training on $AFM_DATASET${epochs:+ for at most $epochs epochs}"
    # shellcheck disable=SC2086  # AFM_TRAIN_ARGS is a list of flags on purpose
    run afm-ctr train ${epochs:+--epochs "$epochs"} ${AFM_TRAIN_ARGS:-} "$@"
  fi

  log "loading user features into Redis"
  run afm-ctr load-features
  log "done"
}

role=${1:-serve}
case "$role" in
  serve) shift || true; exec afm-ctr serve "$@" ;;
  train) shift; train_job "$@" ;;
  *) exec "$@" ;;
esac
