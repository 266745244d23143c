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

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
need valgrind valgrind

cargo build --release -q -p gateway -p e2e --bins
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

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

nginx_conf() { # port dir
  cat <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $2/nginx.pid;
error_log $2/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $2/body;
  proxy_temp_path $2/proxy;
  fastcgi_temp_path $2/fastcgi;
  uwsgi_temp_path $2/uwsgi;
  scgi_temp_path $2/scgi;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
    }
  }
}
NGINX
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
      nginx_conf "$port" "$WORK/nginx-$loaded" > "$WORK/nginx-$loaded/nginx.conf"
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
