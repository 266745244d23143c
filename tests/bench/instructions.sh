#!/usr/bin/env bash
# User-space instructions per proxied request, gateway against nginx, counted
# by valgrind's callgrind in one run. Unlike req/s on a shared 2-core VM,
# instruction counts repeat to within a few percent, so this shows what a
# hot-path change did even when the machine is busy. It counts only user
# space (not the kernel's socket work, the larger half of a proxy's CPU) and
# not cache misses: `tests/bench/proxy.sh` stays the throughput benchmark.
#
#   tests/bench/instructions.sh [--duration 8] [--connections 16] [--path /api/hello]
#
# Each proxy runs alone under callgrind (gateway --workers 1; nginx with
# master_process off) against the same mock-upstream, driven by wrk -t1 for a
# bounded time; a second, idle run of each gives its start-up cost, which is
# subtracted. Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=8 CONNS=16 URLPATH=/api/hello
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --path) URLPATH=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh
need wrk wrk
need nginx nginx-light
need valgrind valgrind

cargo build --release -q -p gateway -p e2e --bins
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=$(free_port)
"$BIN/mock-upstream" --listen "127.0.0.1:$UP" --workers 1 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$UP"

gateway_conf() { # port admin_port
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
[upstreams.up]
endpoints = ["127.0.0.1:$UP"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
TOML
}

# measure NAME LOADED(0|1) -> prints "instructions requests"
measure() {
  local name=$1 loaded=$2 port out pid requests=1
  port=$(free_port)
  out="$WORK/$name-$loaded.callgrind"
  case "$name" in
    gateway)
      gateway_conf "$port" "$(free_port)" > "$WORK/gateway.toml"
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN/gateway" serve --config "$WORK/gateway.toml" --workers 1 >/dev/null 2>&1 & pid=$! ;;
    nginx)
      mkdir -p "$WORK/nginx-$loaded"
      nginx_conf "$port" "$WORK/nginx-$loaded" "$UP" 1 off > "$WORK/nginx-$loaded/nginx.conf"
      valgrind --tool=callgrind --callgrind-out-file="$out" \
        nginx -c "$WORK/nginx-$loaded/nginx.conf" -p "$WORK/nginx-$loaded" >/dev/null 2>&1 & pid=$! ;;
  esac
  wait_port "$port"
  if [ "$loaded" = 1 ]; then
    requests=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port$URLPATH" | awk '/requests in/{print $1}')
  else
    curl -s -o /dev/null "http://127.0.0.1:$port$URLPATH"
  fi
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$(awk '/^summary:/{print $2}' "$out") $requests"
}

echo "callgrind, wrk -t1 -c$CONNS -d${DURATION}s $URLPATH, one worker each; user-space instructions per request"
declare -A PER
for name in gateway nginx; do
  read -r idle _ < <(measure "$name" 0)
  read -r total requests < <(measure "$name" 1)
  PER[$name]=$(( (total - idle) / requests ))
  printf '%-8s %8d instructions/request  (%d requests, %d instructions, start-up %d subtracted)\n' \
    "$name" "${PER[$name]}" "$requests" "$total" "$idle"
done
python3 -c "import sys; print(f'gateway/nginx instructions per request: {int(sys.argv[1])/int(sys.argv[2]):.2f}x (lower is better)')" \
  "${PER[gateway]}" "${PER[nginx]}"
