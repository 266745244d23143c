#!/usr/bin/env bash
# loadgen vs wrk, in the same run: one worker thread each (`loadgen --workers 1`,
# `wrk -t1`), the same number of keep-alive connections, against one trivial
# mock-upstream endpoint. Rounds are interleaved and the medians compared; the target
# is loadgen >= 0.8x wrk's request rate. Also prints each tool's p50/p99.
#
#   tests/bench/loadgen.sh [CONNECTIONS=64] [SECONDS=10] [ROUNDS=3]
#
# Installs wrk if missing (apt-get). Load goes only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=${1:-64}; SECS=${2:-10}; ROUNDS=${3:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bins -q
bin=target/release
tmp=$(mktemp -d); trap 'kill $MOCK 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

"$bin/mock-upstream" --listen 127.0.0.1:0 --workers 1 >"$tmp/mock.out" 2>/dev/null & MOCK=$!
for _ in $(seq 100); do [ -s "$tmp/mock.out" ] && break; sleep 0.05; done
ADDR=$(sed -n 's/^mock-upstream listening on //p' "$tmp/mock.out")
URL="http://$ADDR/api/hello"
cat >"$tmp/probe.toml" <<'TOML'
name = "bench"
[[user]]
name = "Probe"
[[user.task]]
name = "/api/hello"
path = "/api/hello"
TOML

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }

echo "target $URL, $C connections, ${SECS}s x $ROUNDS interleaved rounds, one worker thread each"
for r in $(seq "$ROUNDS"); do
  wrk -t1 -c"$C" -d"${SECS}s" --latency "$URL" >"$tmp/wrk.$r"
  awk '/Requests\/sec/ {print $2}' "$tmp/wrk.$r" >>"$tmp/wrk.rps"
  awk '$1=="50%" {print $2}' "$tmp/wrk.$r" | to_ms >>"$tmp/wrk.p50"
  awk '$1=="99%" {print $2}' "$tmp/wrk.$r" | to_ms >>"$tmp/wrk.p99"
  "$bin/loadgen" run "$tmp/probe.toml" --host "http://$ADDR" --workers 1 \
      --users "$C" --spawn-rate 1000000 --run-time "${SECS}s" --only-summary \
      --summary-export "$tmp/lg.$r.json" >"$tmp/lg.$r.txt" || true
  python3 - "$tmp/lg.$r.json" >>"$tmp/lg.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
m = d["metrics"]
print(m["http_reqs"]["rate"], m["http_req_duration"]["p(50)"], m["http_req_duration"]["p(99)"],
      "unreliable" if d["loadgen"]["reliability"]["unreliable"] else "ok")
PY
  echo "round $r: wrk $(tail -1 "$tmp/wrk.rps") req/s, loadgen $(tail -1 "$tmp/lg.tsv" | cut -d' ' -f1) req/s"
done
WRK=$(median <"$tmp/wrk.rps"); LG=$(cut -d' ' -f1 "$tmp/lg.tsv" | median)
WP50=$(median <"$tmp/wrk.p50"); WP99=$(median <"$tmp/wrk.p99")
LP50=$(cut -d' ' -f2 "$tmp/lg.tsv" | median); LP99=$(cut -d' ' -f3 "$tmp/lg.tsv" | median)
RATIO=$(awk -v a="$LG" -v b="$WRK" 'BEGIN {printf "%.2f", a/b}')
printf '%-10s %12s %10s %10s\n' tool "req/s" "p50 ms" "p99 ms"
printf '%-10s %12.0f %10.2f %10.2f\n' "wrk -t1" "$WRK" "$WP50" "$WP99"
printf '%-10s %12.0f %10.2f %10.2f\n' "loadgen" "$LG" "$LP50" "$LP99"
echo "loadgen/wrk = ${RATIO}x (target >= 0.8x); loadgen self-check: $(cut -d' ' -f4 "$tmp/lg.tsv" | sort | uniq -c | tr '\n' ' ')"
