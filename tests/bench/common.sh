# Shared by the proxy benchmarks (sourced): helpers, and the nginx peer
# configuration, defined once so every benchmark compares against the same
# nginx.

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: up to 20 s (servers under valgrind start slowly).
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

# nginx_conf LISTEN_PORT DIR UPSTREAM_PORT WORKERS [MASTER on|off]: nginx as a
# reverse proxy equivalent to the gateway: keep-alive to the upstream,
# forwarding headers and a request id like ours, no access log.
nginx_conf() {
  cat <<NGINX
worker_processes $4;
master_process ${5:-on};
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
  upstream up { server 127.0.0.1:$3; keepalive 256; }
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

# bench_setup: builds the release binaries, sets BIN, WORK (a temporary
# directory) and PIDS (processes to stop), and stops them and removes WORK
# on exit. Start background processes with `... & PIDS+=($!)`.
bench_setup() {
  cargo build --release -q -p gateway -p e2e --bins
  BIN=target/release
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# gateway_toml LISTEN_PORT ADMIN_PORT UPSTREAM_PORT [EXTRA_TOML]: the
# benchmarks' gateway, one route to one upstream, plus EXTRA_TOML.
gateway_toml() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
[upstreams.up]
endpoints = ["127.0.0.1:$3"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
${4:-}
TOML
}

# trace_toml SINK_PORT RATIO: tracing at RATIO to a mock-upstream sink.
trace_toml() { printf '[telemetry.tracing]\nenabled = true\nendpoint = "http://127.0.0.1:%s/upload"\nsample_ratio = %s\nscheduled_delay = "1s"\n' "$1" "$2"; }
