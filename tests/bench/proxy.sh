#!/usr/bin/env bash
# Proxy throughput and latency, measured in one run on this machine:
#   wrk -> mock-upstream            (direct: the ceiling)
#   wrk -> gateway -> mock-upstream (ours)
#   wrk -> nginx   -> mock-upstream (the peer: same worker count, keep-alive upstream)
#   wrk -> gateway with OpenTelemetry tracing at sample ratio 1.0 (gw-trace):
#          a SERVER and a CLIENT span per request, batched and exported with
#          OTLP/HTTP to a second mock-upstream used as a sink (POST /upload);
#          gw-trace1 is the same at sample ratio 0.01
#   wrk -> gateway with JWT auth + rate limit + cache enabled (gateway+mw):
#          every request verified (HS256) and counted (one local GCRA key);
#          the route's answers are cached, so it measures the middleware
#          path with cache hits, not the upstream hop
# Prints req/s, p50 and p99 for each, and the ratios gateway/nginx and
# gateway/direct. Everything binds to 127.0.0.1 and runs for a bounded time.
#
#   tests/bench/proxy.sh [--duration 10] [--connections 64] [--workers 1] [--path /api/hello]
#   EXTRA_ROWS=1 adds rows for other gateway configs as they are defined below.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=10 CONNS=64 WORKERS=1 URLPATH=/api/hello
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --path) URLPATH=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh
need wrk wrk
need nginx nginx-light

cargo build --release -q -p gateway -p e2e --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT


UP=$(free_port); GW=$(free_port); ADMIN=$(free_port); NG=$(free_port); GW2=$(free_port); ADMIN2=$(free_port)
GWM=$(free_port); ADMIN3=$(free_port); GWT=$(free_port); ADMIN4=$(free_port); SINK=$(free_port)
GWT1=$(free_port); ADMIN5=$(free_port)

# The upstream gets the spare capacity: it must not be the bottleneck.
"$BIN/mock-upstream" --listen "127.0.0.1:$UP" --workers 2 >/dev/null 2>&1 & PIDS+=($!); UP_PID=$!
wait_port "$UP"

cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADMIN"
[upstreams.up]
endpoints = ["127.0.0.1:$UP"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
TOML
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway.toml" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!); GW_PID=$!
wait_port "$GW"

# The same gateway with telemetry off: the cost of metrics, SLO windows and
# access-log sampling is the difference between the two rows.
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GW2/" -e "s/127.0.0.1:$ADMIN/127.0.0.1:$ADMIN2/" "$WORK/gateway.toml" > "$WORK/gateway-notel.toml"
printf '[telemetry]\nmetrics = false\n[telemetry.access_log]\nenabled = false\n' >> "$WORK/gateway-notel.toml"
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway-notel.toml" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!); GW2_PID=$!
wait_port "$GW2"

# The same gateway with every request traced, exported to a sink that
# answers 200 (the exporter does all its work: encode, send, read).
"$BIN/mock-upstream" --listen "127.0.0.1:$SINK" --workers 1 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SINK"
sed -e "s/127.0.0.1:$GW\"/127.0.0.1:$GWT\"/" -e "s/127.0.0.1:$ADMIN\"/127.0.0.1:$ADMIN4\"/" "$WORK/gateway.toml" > "$WORK/gateway-trace.toml"
printf '[telemetry.tracing]\nenabled = true\nendpoint = "http://127.0.0.1:%s/upload"\nsample_ratio = 1.0\nscheduled_delay = "1s"\n' "$SINK" >> "$WORK/gateway-trace.toml"
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway-trace.toml" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!); GWT_PID=$!
wait_port "$GWT"
sed -e "s/127.0.0.1:$GWT\"/127.0.0.1:$GWT1\"/" -e "s/127.0.0.1:$ADMIN4\"/127.0.0.1:$ADMIN5\"/" -e "s/sample_ratio = 1.0/sample_ratio = 0.01/" "$WORK/gateway-trace.toml" > "$WORK/gateway-trace1.toml"
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway-trace1.toml" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!); GWT1_PID=$!
wait_port "$GWT1"

# The same gateway with the middleware on.
printf 'meetinity-dev-secret-change-me-in-production\n' > "$WORK/jwt-secret"
cat > "$WORK/gateway-mw.toml" <<TOML
[server]
listen = "127.0.0.1:$GWM"
admin_listen = "127.0.0.1:$ADMIN3"
[auth.mock]
issuers = ["mock-upstream"]
audiences = ["meetinity"]
[[auth.mock.keys]]
algorithms = ["HS256"]
kid = "hs-1"
secret_file = "$WORK/jwt-secret"
[upstreams.up]
endpoints = ["127.0.0.1:$UP"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
auth = { provider = "mock", mode = "required" }
rate_limits = [{ name = "per-client", key = "client_ip", limit = 100000000, window = "1s" }]
cache = { ttl = "60s", share_authorized = true }
TOML
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway-mw.toml" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!); GWM_PID=$!
wait_port "$GWM"
TOKEN=$(curl -sS -X POST "http://127.0.0.1:$UP/api/auth/session" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
AUTH_HEADER="Authorization: Bearer $TOKEN"

# nginx as an equivalent reverse proxy (tests/bench/common.sh).
mkdir -p "$WORK/nginx"
nginx_conf "$NG" "$WORK/nginx" "$UP" "$WORKERS" > "$WORK/nginx/nginx.conf"
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!); NG_MASTER=$!
wait_port "$NG"
NG_PID=$(pgrep -P "$NG_MASTER" | head -1)   # the one worker (CPU is measured for WORKERS=1)

ROUNDS=${ROUNDS:-3}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

run() { # name port pid [header] -> "name rps p50_ms p99_ms non2xx cpu_us_per_req"
  local before after
  before=$( [ -n "$3" ] && cpu_ticks "$3" || echo 0 )
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency ${4:+-H "$4"} "http://127.0.0.1:$2$URLPATH" > "$WORK/$1.txt"
  after=$( [ -n "$3" ] && cpu_ticks "$3" || echo 0 )
  python3 - "$1" "$WORK/$1.txt" "$((after - before))" "$TICK" "$DURATION" <<'PY'
import re, sys
name, path, ticks, hz, dur = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
t = open(path).read()
def ms(label):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: (.*)", t)
cpu_us = ticks / hz * 1e6 / (rps * dur) if ticks else 0.0
print(f"{name} {rps:.0f} {ms('50'):.3f} {ms('99'):.3f} {errs.group(1) if errs else 0} {cpu_us:.2f} {('[' + sock.group(1) + ']') if sock else ''}")
PY
}

echo "wrk -t1 -c$CONNS -d${DURATION}s $URLPATH; gateway and nginx with $WORKERS worker(s); $(nproc) cores; $ROUNDS interleaved rounds, medians"
wrk -t1 -c"$CONNS" -d2s -H "$AUTH_HEADER" "http://127.0.0.1:$GWM$URLPATH" >/dev/null 2>&1 || true
for p in "$UP" "$GW" "$GW2" "$GWT" "$GWT1" "$NG"; do wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p$URLPATH" >/dev/null 2>&1 || true; done  # warm-up
RESULTS=$(
  for r in $(seq "$ROUNDS"); do
    run direct "$UP" "$UP_PID"
    # The pair under test runs back to back, first one then the other
    # first, so machine drift between rounds and position in the round
    # cancel out of the per-round ratios.
    if [ $((r % 2)) = 1 ]; then
      run gateway "$GW" "$GW_PID"; run nginx "$NG" "$NG_PID"
    else
      run nginx "$NG" "$NG_PID"; run gateway "$GW" "$GW_PID"
    fi
    run gw-notel "$GW2" "$GW2_PID"
    run gw-trace "$GWT" "$GWT_PID"
    run gw-trace1 "$GWT1" "$GWT1_PID"
    run gateway+mw "$GWM" "$GWM_PID" "$AUTH_HEADER"
  done
)
echo "$RESULTS" > "$WORK/results.txt"
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [l.split(None, 6) for l in open(sys.argv[1]).read().strip().splitlines()]
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
def med(name, i):
    return statistics.median(float(r[i]) for r in by[name])
print(f"{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}{'cpu us/req':>12}   (all rounds: req/s)")
for name in ("direct", "gateway", "gw-notel", "gw-trace", "gw-trace1", "nginx", "gateway+mw"):
    errs = sum(int(r[4]) for r in by[name])
    cpu = med(name, 5)
    label = "upstream" if name == "direct" else name
    print(f"{name:<10}{med(name,1):>10.0f}{med(name,2):>10.3f}{med(name,3):>10.3f}{errs:>10}{cpu:>12.2f}   {' '.join(r[1] for r in by[name])}  (cpu of {label})")
g, n, d = med("gateway", 1), med("nginx", 1), med("direct", 1)
print(f"gateway/nginx throughput: {g/n:.2f}x   gateway/direct: {g/d:.2f}x")
print(f"gateway/nginx p99: {med('gateway',3)/med('nginx',3):.2f}x (lower is better)")
print(f"gateway/nginx CPU per request: {med('gateway',5)/med('nginx',5):.2f}x (lower is better)")
# Paired by round (the two ran back to back): the steadier comparison on a
# machine whose speed drifts between rounds.
def paired(i, x="gateway", y="nginx"):
    rs = sorted(float(a[i]) / float(b[i]) for a, b in zip(by[x], by[y]))
    return f"median {statistics.median(rs):.3f}x, range {rs[0]:.3f}-{rs[-1]:.3f}x"
print(f"gateway/nginx per round: throughput {paired(1)}; p99 {paired(3)}; CPU per request {paired(5)}")
# The telemetry and tracing rows run in the same round as the plain
# gateway: their per-round ratios cancel the machine's drift between rounds.
print(f"telemetry on/off per round: throughput {paired(1, 'gateway', 'gw-notel')}; CPU per request {paired(5, 'gateway', 'gw-notel')}")
print(f"tracing 1.0/gateway per round: throughput {paired(1, 'gw-trace', 'gateway')}; CPU per request {paired(5, 'gw-trace', 'gateway')}")
print(f"telemetry on/off throughput: {g/med('gw-notel',1):.3f}x   CPU per request: {med('gateway',5)/med('gw-notel',5):.3f}x")
print(f"tracing at ratio 1.0/gateway throughput: {med('gw-trace',1)/g:.3f}x   CPU per request: {med('gw-trace',5)/med('gateway',5):.3f}x")
print(f"tracing at ratio 0.01/gateway throughput: {med('gw-trace1',1)/g:.3f}x   CPU per request: {med('gw-trace1',5)/med('gateway',5):.3f}x")
print(f"gateway+mw (auth + rate limit + cache hits)/gateway throughput: {med('gateway+mw',1)/g:.2f}x   CPU per request: {med('gateway+mw',5)/med('gateway',5):.2f}x")
PY
# Whether the traced gateway exported everything or shed spans (queue full).
curl -s "http://127.0.0.1:$ADMIN4/metrics" | grep -E '^gateway_trace_' | tr '\n' ' ' | sed 's/$/\n/'
