#!/usr/bin/env bash
# TLS termination, gateway against nginx, measured in one run on this machine.
# Both terminate TLS with the same ECDSA P-256 certificate and proxy to the
# same mock-upstream over plaintext keep-alive, with the same worker count:
#   keepalive  wrk over HTTPS/1.1, 64 connections kept open (bulk crypto + proxy)
#   handshake  wrk over HTTPS/1.1 with "Connection: close": every request is a
#              new TCP connection and a full TLS handshake (wrk does not resume)
#   h2         h2load over TLS with ALPN h2, 64 connections x 10 streams
# Prints req/s, p50/p99 (wrk) or mean latency (h2load), CPU per request of the
# terminating process, and the gateway/nginx ratios, per round and as medians.
#
#   tests/bench/tls.sh [--duration 10] [--connections 64] [--workers 1] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=10 CONNS=64 WORKERS=1 ROUNDS=3 URLPATH=/api/hello
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh
need wrk wrk
need nginx nginx-light
need h2load nghttp2-client
need openssl openssl

cargo build --release -q -p gateway -p e2e --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# One CA, one server certificate for localhost / 127.0.0.1 (what cert-manager
# would issue: ECDSA P-256).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/ext" -out "$WORK/server.pem" 2>/dev/null

UP=$(free_port); GW=$(free_port); ADMIN=$(free_port); NG=$(free_port)
"$BIN/mock-upstream" --listen "127.0.0.1:$UP" --workers 2 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$UP"

cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADMIN"
[server.tls]
certificates = [{ cert_file = "$WORK/server.pem", key_file = "$WORK/server.key" }]
[upstreams.up]
endpoints = ["127.0.0.1:$UP"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
TOML
RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/gateway.toml" --workers "$WORKERS" >"$WORK/gateway.log" 2>&1 & PIDS+=($!); GW_PID=$!
wait_port "$GW"

# nginx: the shared reverse-proxy configuration (common.sh) with the listener
# switched to TLS and h2 (nginx 1.22 syntax), TLS 1.2 and 1.3, and no cap of
# 1000 requests per connection (nginx's default keepalive_requests closes an
# h2 connection after 1000 streams, which h2load counts as failed requests;
# the gateway has no such cap).
mkdir -p "$WORK/nginx"
nginx_conf "$NG" "$WORK/nginx" "$UP" "$WORKERS" \
  | sed -e "s|listen 127.0.0.1:$NG;|listen 127.0.0.1:$NG ssl http2;\n    ssl_certificate $WORK/server.pem;\n    ssl_certificate_key $WORK/server.key;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    keepalive_requests 1000000;|" \
  > "$WORK/nginx/nginx.conf"
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!); NG_MASTER=$!
wait_port "$NG"
NG_PID=$(pgrep -P "$NG_MASTER" | head -1)

for p in "$GW" "$NG"; do
  curl -fsS --cacert "$WORK/ca.pem" "https://localhost:$p$URLPATH" -o /dev/null \
    --resolve "localhost:$p:127.0.0.1" || { echo "TLS request to port $p failed" >&2; cat "$WORK/gateway.log" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run NAME CASE PORT PID -> "NAME CASE rps p50_ms p99_ms errors cpu_us_per_req"
run() {
  local name=$1 case=$2 port=$3 pid=$4 before after out="$WORK/$1-$2.txt"
  before=$(cpu_ticks "$pid")
  case "$case" in
    keepalive) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "https://127.0.0.1:$port$URLPATH" > "$out" ;;
    handshake) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Connection: close" "https://127.0.0.1:$port$URLPATH" > "$out" ;;
    h2) h2load -c"$CONNS" -m10 -D"$DURATION" --warm-up-time=1 "https://127.0.0.1:$port$URLPATH" > "$out" 2>&1 ;;
  esac
  after=$(cpu_ticks "$pid")
  python3 - "$name" "$case" "$out" "$((after - before))" "$TICK" <<'PY'
import re, sys
name, case, path, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t = open(path).read()
def ms(v, u):
    v = float(v)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
if case == "h2":
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", t)
    secs, rps = float(m.group(1)), float(m.group(2))
    req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
    lat = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", t)
    p50 = ms(lat.group(5), lat.group(6))  # mean (h2load prints no percentiles)
    p99 = ms(lat.group(3), lat.group(4))  # max
    errs = int(req.group(3)) + int(req.group(4))
    done = int(req.group(1))
else:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    secs = float(re.search(r"requests in ([\d.]+)(m?s)", t).group(1))
    def pct(label):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, t, re.M)
        return ms(m.group(1), m.group(2))
    p50, p99 = pct("50"), pct("99")
    e = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs = (int(e.group(1)) if e else 0) + (sum(int(x) for x in s.groups()) if s else 0)
    done = int(re.search(r"(\d+) requests in", t).group(1))
cpu_us = ticks / hz * 1e6 / done if done else 0.0
print(f"{name} {case} {rps:.0f} {p50:.3f} {p99:.3f} {errs} {cpu_us:.2f}")
PY
}

echo "TLS termination: gateway vs nginx, $WORKERS worker(s) each, $CONNS connections, ${DURATION}s per run, $ROUNDS interleaved rounds; $(nproc) cores; $(nginx -v 2>&1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "$GW" "$NG"; do wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$p$URLPATH" >/dev/null 2>&1 || true; done  # warm-up
RESULTS=$(
  for r in $(seq "$ROUNDS"); do
    for c in keepalive handshake h2; do
      # Alternate who goes first so drift cancels out of the paired ratios.
      if [ $((r % 2)) = 1 ]; then run gateway "$c" "$GW" "$GW_PID"; run nginx "$c" "$NG" "$NG_PID"
      else run nginx "$c" "$NG" "$NG_PID"; run gateway "$c" "$GW" "$GW_PID"; fi
    done
  done
)
echo "$RESULTS" > "$WORK/results.txt"
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().strip().splitlines()]
by = {}
for r in rows:
    by.setdefault((r[0], r[1]), []).append(r)
def med(k, i):
    return statistics.median(float(r[i]) for r in by[k])
print(f"{'case':<10}{'target':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu us/req':>12}")
for case in ("keepalive", "handshake", "h2"):
    for name in ("gateway", "nginx"):
        k = (name, case)
        print(f"{case:<10}{name:<9}{med(k,2):>9.0f}{med(k,3):>9.3f}{med(k,4):>9.3f}{sum(int(r[5]) for r in by[k]):>8}{med(k,6):>12.2f}")
    pairs = list(zip(by[("gateway", case)], by[("nginx", case)]))
    thr = sorted(float(a[2]) / float(b[2]) for a, b in pairs)
    p99 = sorted(float(a[4]) / float(b[4]) for a, b in pairs)
    cpu = sorted(float(a[6]) / float(b[6]) for a, b in pairs)
    note = " (h2load: p50 column is the mean, p99 the max)" if case == "h2" else ""
    print(f"  gateway/nginx {case}: throughput {statistics.median(thr):.2f}x ({thr[0]:.2f}-{thr[-1]:.2f}), "
          f"p99 {statistics.median(p99):.2f}x, CPU per request {statistics.median(cpu):.2f}x{note}")
PY
