#!/usr/bin/env bash
# Entrypoint of the project image.
#   ray-head   [ray start flags]   Ray head: GCS on 6379, dashboard + job API on 8265, token auth.
#   ray-worker [ray start flags]   Ray worker joining $RAY_HEAD_ADDRESS with the same token.
#   sweep      [run.py flags]      python sweeps/run.py ... (the sweep driver, in this container).
#   anything else                  executed as given (bash, python, ray job submit, ...).
set -euo pipefail

require_secret() {  # refuse to start without a real value (empty or the .env.example placeholder)
  local name=$1 value=${!1:-}
  if [[ -z "$value" || "$value" == change-me* ]]; then
    echo "error: $name is not set (copy docker/.env.example to docker/.env and set it)" >&2
    exit 2
  fi
}

ray_auth() {
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  if [[ "$RAY_AUTH_MODE" == token ]]; then
    require_secret RAY_AUTH_TOKEN
  fi
}

cmd=${1:-sweep}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  ray-head)
    ray_auth
    # Inside the container network; the host publishes these ports on BIND_ADDRESS only.
    exec ray start --head --block --disable-usage-stats \
      --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --num-cpus="${RAY_HEAD_NUM_CPUS:-2}" --num-gpus=0 "$@"
    ;;
  ray-worker)
    ray_auth
    exec ray start --block --disable-usage-stats --address="${RAY_HEAD_ADDRESS:-ray-head:6379}" "$@"
    ;;
  sweep)
    exec python sweeps/run.py "$@"
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
