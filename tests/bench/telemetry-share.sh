#!/usr/bin/env bash
# Where telemetry's CPU goes, by sampling, which this VM's round-to-round
# drift (up to 40 % in req/s) does not blur: the gateway (one worker) runs
# under wrk while `perf record` samples it, and the samples are split into
#   telemetry  metrics, SLO windows, access log (symbols of telemetry::,
#              prometheus_client, hdrhistogram)
#   tracing    span writing on the request path (telemetry::span, ::trace,
#              ::otlp)
#   export     the export threads (gateway-otlp*)
# each printed as microseconds of CPU per request and as a share of the
# gateway's CPU. Code inlined into non-telemetry functions is not counted,
# so the shares are lower bounds; `tests/bench/telemetry.sh` measures the
# same configurations by throughput.
#
#   tests/bench/telemetry-share.sh [--connections 64] [--duration 10]
# Configurations: `on` (defaults) and `trace` (plus tracing at ratio 1.0 to
# a mock-upstream sink). Everything binds to 127.0.0.1, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=64 DURATION=10 URLPATH=/api/hello
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) CONNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh
need wrk wrk
need perf linux-perf

bench_setup

UP=$(free_port) SINK=$(free_port)
"$BIN/mock-upstream" --listen "127.0.0.1:$UP" --workers 2 >/dev/null 2>&1 & PIDS+=($!)
"$BIN/mock-upstream" --listen "127.0.0.1:$SINK" --workers 1 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$UP"; wait_port "$SINK"

FREQ=2999
echo "wrk -t1 -c$CONNS -d${DURATION}s $URLPATH; one gateway worker; perf at $FREQ Hz"
for name in on trace; do
  port=$(free_port)
  extra=""
  [ "$name" = trace ] && extra=$(trace_toml "$SINK" 1.0)
  gateway_toml "$port" "$(free_port)" "$UP" "$extra" > "$WORK/$name.toml"
  RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/$name.toml" --workers 1 >/dev/null 2>&1 & gw=$!
  PIDS+=("$gw")
  wait_port "$port"
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port$URLPATH" >/dev/null
  perf record -q -F "$FREQ" -p "$gw" -o "$WORK/$name.data" -- sleep "$DURATION" >/dev/null 2>&1 & rec=$!
  rps=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port$URLPATH" | awk '/Requests\/sec/{print $2}')
  wait "$rec" || true
  kill "$gw"; wait "$gw" 2>/dev/null || true
  perf report -i "$WORK/$name.data" --no-children --sort comm,sym -n --stdio 2>/dev/null |
    python3 -c '
import re, sys
name, rps, dur, freq = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
tot = tel = trc = exp = 0
for line in sys.stdin:
    m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    n, comm, sym = int(m.group(1)), m.group(2), m.group(3)
    tot += n
    if comm.startswith("gateway-otlp"):
        exp += n
    elif re.search(r"telemetry::(span|trace|otlp)", sym):
        trc += n
    elif re.search(r"telemetry|prometheus|hdrhistogram", sym):
        tel += n
us = lambda n: n / freq / (rps * dur) * 1e6
share = lambda n: 100 * n / max(tot, 1)
print(f"{name:<6} {rps:>8.0f} req/s  CPU {us(tot):5.2f} us/req  telemetry {us(tel):.3f} us ({share(tel):.1f} %)  tracing {us(trc):.3f} us ({share(trc):.1f} %)  export {us(exp):.3f} us ({share(exp):.1f} %)")
' "$name" "$rps" "$DURATION" "$FREQ"
done
