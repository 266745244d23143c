#!/usr/bin/env bash
# The cost of telemetry, measured as an A/B on one machine in one run:
#   on     the gateway with its defaults (metrics, SLO windows, access-log
#          sampling; no tracing)
#   off    the same with `telemetry.metrics = false` and the access log off
#   trace  `on` plus tracing at sample_ratio 1.0 (a SERVER and a CLIENT span
#          per request) exported by OTLP/HTTP to a mock-upstream sink
#   trace1 `on` plus tracing at sample_ratio 0.01
# Each round runs all four back to back, rotating which goes first, so the
# machine's drift and a run's position in the round cancel out of the
# per-round ratios (on/off, trace/on, trace1/on), whose medians are printed
# with their range. Throughput is wrk's req/s against one gateway worker;
# CPU per request is the gateway process's (all threads, export thread
# included) from /proc. `tests/bench/proxy.sh` prints the same rows beside
# nginx, but there the four do not share a round position.
#
#   tests/bench/telemetry.sh [--connections 64] [--duration 10] [--rounds 6]
# Everything binds to 127.0.0.1 and runs for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=64 DURATION=10 ROUNDS=6 URLPATH=/api/hello
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) CONNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

. tests/bench/common.sh
need wrk wrk

bench_setup

UP=$(free_port) SINK=$(free_port)
"$BIN/mock-upstream" --listen "127.0.0.1:$UP" --workers 2 >/dev/null 2>&1 & PIDS+=($!)
"$BIN/mock-upstream" --listen "127.0.0.1:$SINK" --workers 1 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$UP"; wait_port "$SINK"

declare -A PORT PID
start() { # name extra-toml
  local port admin
  port=$(free_port); admin=$(free_port)
  gateway_toml "$port" "$admin" "$UP" "$2" > "$WORK/$1.toml"
  RUST_LOG=warn "$BIN/gateway" serve --config "$WORK/$1.toml" --workers 1 >/dev/null 2>&1 & PIDS+=($!)
  PID[$1]=$!; PORT[$1]=$port
  wait_port "$port"
}
start on ""
start off "$(printf '[telemetry]\nmetrics = false\n[telemetry.access_log]\nenabled = false\n')"
start trace "$(trace_toml "$SINK" 1.0)"
start trace1 "$(trace_toml "$SINK" 0.01)"

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
run() { # name -> "name rps cpu_us_per_req"
  local before after rps
  before=$(cpu_ticks "${PID[$1]}")
  rps=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${PORT[$1]}$URLPATH" | awk '/Requests\/sec/{print $2}')
  after=$(cpu_ticks "${PID[$1]}")
  python3 -c "import sys; n,r,t,hz,d=sys.argv[1],float(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]),float(sys.argv[5]); print(n, r, t/hz*1e6/(r*d))" \
    "$1" "$rps" "$((after - before))" "$TICK" "$DURATION"
}

echo "wrk -t1 -c$CONNS -d${DURATION}s $URLPATH; one gateway worker each; $(nproc) cores; $ROUNDS rounds, order rotated"
for n in on off trace trace1; do wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$n]}$URLPATH" >/dev/null 2>&1 || true; done
ORDER=(on off trace trace1)
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in 0 1 2 3; do run "${ORDER[$(( (i + r) % 4 ))]}"; done | sed "s/^/$r /"
done > "$WORK/results.txt"
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    r, name, rps, cpu = line.split()
    rounds.setdefault(r, {})[name] = (float(rps), float(cpu))
def ratio(a, b, i):
    rs = sorted(v[a][i] / v[b][i] for v in rounds.values())
    return f"median {statistics.median(rs):.3f}x (range {rs[0]:.3f}-{rs[-1]:.3f})"
for name in ("on", "off", "trace", "trace1"):
    rps = [v[name][0] for v in rounds.values()]
    cpu = [v[name][1] for v in rounds.values()]
    print(f"{name:<7} req/s median {statistics.median(rps):>8.0f}   CPU us/req median {statistics.median(cpu):6.2f}   rounds: {' '.join(f'{x:.0f}' for x in rps)}")
print(f"telemetry on/off:  throughput {ratio('on', 'off', 0)}   CPU per request {ratio('on', 'off', 1)}")
print(f"tracing 1.0/on:    throughput {ratio('trace', 'on', 0)}   CPU per request {ratio('trace', 'on', 1)}")
print(f"tracing 0.01/on:   throughput {ratio('trace1', 'on', 0)}   CPU per request {ratio('trace1', 'on', 1)}")
PY
