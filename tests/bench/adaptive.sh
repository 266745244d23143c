#!/usr/bin/env bash
# Adaptive concurrency vs fixed max_inflight vs no limit, in one run:
#   loadgen (open model, 3x the upstream's capacity) -> gateway -> mock-upstream
# mock-upstream in capacity mode: 8 requests served at once, 50 ms each, the
# rest queued in arrival order, so at most 160 req/s and latency rising by
# 50 ms for every 8 requests in flight beyond 8. Offered: 480 req/s for 60 s.
# Gateway configs (same route, a fresh gateway and mock each):
#   none            no limit
#   fixed-N         max_inflight = N for each N in FIXED (the best fixed limit
#                   is chosen in hindsight from these)
#   adaptive        concurrency = { mode = "adaptive", target = "p95<=350ms",
#                   min = 4, max = 1024 }
# For each: goodput = requests answered 2xx/3xx within 350 ms (loadgen's
# client-side latency, a slower_than check) per second; admitted p95/p99 =
# the gateway's own histogram of 2xx answers (time to last byte), with 5 ms
# buckets up to 500 ms; refused = 503s. Everything on 127.0.0.1, bounded.
#
#   tests/bench/adaptive.sh [--duration 60] [--rate 480] [--fixed "8 16 32 48 64"]
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=60 RATE=480 FIXED="8 16 32 48 64" SERVERS=8 BASE=50ms
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --fixed) FIXED=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh

[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q -p gateway -p e2e -p loadgen --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/scenario.toml" <<'TOML'
name = "adaptive-bench"
[[user]]
name = "Client"
[[user.task]]
name = "/api/hello"
path = "/api/hello"
checks = [{ slower_than = "350ms" }]
TOML

# 5 ms buckets to 500 ms, 10 ms to 1 s, then coarse: admitted quantiles
# interpolate within 5 ms where the target is.
BUCKETS=$(python3 -c 'b=[round(0.005*i,3) for i in range(1,101)]+[round(0.5+0.01*i,2) for i in range(1,51)]+[1.25,1.5,2,3,5,10,20,30,60]; print(", ".join(map(str,b)))')

# run NAME ROUTE_EXTRA: one measured run; prints one table row.
run() {
  local name=$1 extra=$2 up gw admin
  up=$(free_port); gw=$(free_port); admin=$(free_port)
  "$BIN/mock-upstream" --listen "127.0.0.1:$up" --capacity "$SERVERS" --base-latency "$BASE" \
    >/dev/null 2>&1 & local mock=$!; PIDS+=($mock)
  wait_port "$up"
  cat > "$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$gw"
admin_listen = "127.0.0.1:$admin"
[telemetry]
buckets = [$BUCKETS]
[upstreams.up]
endpoints = ["127.0.0.1:$up"]
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
$extra
TOML
  RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/$name.toml" >"$WORK/$name.gw.log" 2>&1 & local gwp=$!; PIDS+=($gwp)
  wait_port "$gw"
  "$BIN/loadgen" run "$WORK/scenario.toml" --host "http://127.0.0.1:$gw" --headless --only-summary \
    --arrival-rate "$RATE" --max-vus 2000 --run-time "${DURATION}s" --timeout 10s \
    --summary-export "$WORK/$name.json" >"$WORK/$name.loadgen.log" 2>&1 || true
  curl -fsS "http://127.0.0.1:$admin/metrics" >"$WORK/$name.metrics"
  kill "$gwp" "$mock" 2>/dev/null || true; wait "$gwp" "$mock" 2>/dev/null || true
  python3 - "$name" "$WORK/$name.json" "$WORK/$name.metrics" "$DURATION" <<'PY'
import json, re, sys
name, summary, metrics, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = json.load(open(summary))
m = s["metrics"]
reqs = m["http_reqs"]["count"]
failed = m["http_req_failed"]["passes"]
dropped = m["dropped_iterations"]["count"]
dur = s["loadgen"]["duration_secs"] or secs
good = (reqs - failed) / dur
buckets, limit, refused = [], None, 0
for line in open(metrics):
    if line.startswith("gateway_request_duration_seconds_bucket") and 'route="all"' in line and 'status_class="2xx"' in line:
        le = re.search(r'le="([^"]+)"', line).group(1)
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if line.startswith("gateway_requests_total") and 'route="all"' in line and 'status="503"' in line:
        refused += float(line.rsplit(" ", 1)[1])
    if line.startswith('gateway_concurrency_limit{route="all"}'):
        limit = float(line.rsplit(" ", 1)[1])
buckets.sort()
admitted = buckets[-1][1] if buckets else 0
def q(p):
    if not admitted:
        return float("nan")
    rank, lo, below = p * admitted, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lo * 1000
            return (lo + (le - lo) * (rank - below) / max(c - below, 1)) * 1000
        lo, below = le, c
    return float("nan")
within = next((c for le, c in buckets if abs(le - 0.35) < 1e-9), 0)
share = within / admitted if admitted else 0
extra = f"{limit:.0f}" if limit is not None else "-"
print(f"| {name} | {reqs/dur:.0f} | {good:.1f} | {admitted/dur:.1f} | {share*100:.1f} % | {q(0.95):.0f} | {q(0.99):.0f} | {refused/dur:.0f} | {dropped} | {extra} |")
PY
}

echo "# adaptive concurrency bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# upstream: $SERVERS at once x $BASE (max $((SERVERS * 1000 / ${BASE%ms})) req/s); offered $RATE req/s for ${DURATION}s; SLO p95<=350ms"
echo
echo "| config | sent req/s | goodput req/s (2xx <= 350 ms) | admitted req/s | admitted <= 350 ms | admitted p95 ms | admitted p99 ms | refused req/s | dropped arrivals | final limit |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
run none ""
for n in $FIXED; do run "fixed-$n" "max_inflight = $n"; done
run adaptive 'concurrency = { mode = "adaptive", target = "p95<=350ms", min = 4, max = 1024 }'
echo
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
