#!/usr/bin/env bash
# loadgen vs wrk (and oha and Locust when installed), in the same run: one worker thread
# each where the tool has the knob (`loadgen --workers 1`, `wrk -t1`; oha pinned to one CPU
# with taskset; Locust is one process), the same number of keep-alive connections, against
# one trivial mock-upstream endpoint. Rounds are interleaved and the medians compared; the
# target is loadgen >= 0.8x wrk's request rate. Also prints each tool's p50/p99.
#
#   tests/bench/loadgen.sh [CONNECTIONS=64] [SECONDS=10] [ROUNDS=3]
#
# Installs wrk if missing (apt-get). oha (`cargo install oha`) and Locust (`pip install
# locust`) are measured when on PATH, skipped with a note otherwise. Load goes only to
# 127.0.0.1.
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
HAVE_OHA=0; command -v oha >/dev/null && HAVE_OHA=1
HAVE_LOCUST=0; command -v locust >/dev/null && HAVE_LOCUST=1
[ $HAVE_OHA = 1 ] || echo "oha not on PATH (cargo install oha): skipped"
[ $HAVE_LOCUST = 1 ] || echo "locust not on PATH (pip install locust): skipped"
# Locust's fastest user class, no wait: as close to a closed loop per connection as it gets.
cat >"$tmp/locustfile.py" <<'PY'
from locust import FastHttpUser, task

class Probe(FastHttpUser):
    @task
    def hello(self):
        self.client.get("/api/hello", name="/api/hello")
PY
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
  line="round $r: wrk $(tail -1 "$tmp/wrk.rps") req/s, loadgen $(tail -1 "$tmp/lg.tsv" | cut -d' ' -f1) req/s"
  if [ $HAVE_OHA = 1 ]; then
    taskset -c 0 oha -z "${SECS}s" -c "$C" --no-tui --output-format json "$URL" >"$tmp/oha.$r.json" 2>/dev/null \
      || oha -z "${SECS}s" -c "$C" --no-tui -j "$URL" >"$tmp/oha.$r.json"
    python3 - "$tmp/oha.$r.json" >>"$tmp/oha.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
print(d["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000)
PY
    line="$line, oha $(tail -1 "$tmp/oha.tsv" | cut -d' ' -f1) req/s"
  fi
  if [ $HAVE_LOCUST = 1 ]; then
    locust -f "$tmp/locustfile.py" --headless -u "$C" -r "$C" -t "${SECS}s" \
        --host "http://$ADDR" --only-summary --csv "$tmp/locust.$r" --loglevel ERROR \
        >/dev/null 2>&1 || true
    python3 - "$tmp/locust.${r}_stats.csv" >>"$tmp/locust.tsv" <<'PY'
import csv, sys
for row in csv.DictReader(open(sys.argv[1])):
    if row["Name"] == "Aggregated":
        print(row["Requests/s"], row["50%"], row["99%"])
PY
    line="$line, locust $(tail -1 "$tmp/locust.tsv" | cut -d' ' -f1) req/s"
  fi
  echo "$line"
done
WRK=$(median <"$tmp/wrk.rps"); LG=$(cut -d' ' -f1 "$tmp/lg.tsv" | median)
WP50=$(median <"$tmp/wrk.p50"); WP99=$(median <"$tmp/wrk.p99")
LP50=$(cut -d' ' -f2 "$tmp/lg.tsv" | median); LP99=$(cut -d' ' -f3 "$tmp/lg.tsv" | median)
RATIO=$(awk -v a="$LG" -v b="$WRK" 'BEGIN {printf "%.2f", a/b}')
printf '%-10s %12s %10s %10s\n' tool "req/s" "p50 ms" "p99 ms"
printf '%-10s %12.0f %10.2f %10.2f\n' "wrk -t1" "$WRK" "$WP50" "$WP99"
printf '%-10s %12.0f %10.2f %10.2f\n' "loadgen" "$LG" "$LP50" "$LP99"
peer() { # name tsv: a row and loadgen's ratio to it
  local rps p50 p99
  rps=$(cut -d' ' -f1 "$2" | median); p50=$(cut -d' ' -f2 "$2" | median); p99=$(cut -d' ' -f3 "$2" | median)
  printf '%-10s %12.0f %10.2f %10.2f   loadgen/%s = %sx\n' "$1" "$rps" "$p50" "$p99" "$1" \
    "$(awk -v a="$LG" -v b="$rps" 'BEGIN {printf "%.2f", a/b}')"
}
[ $HAVE_OHA = 1 ] && peer oha "$tmp/oha.tsv"
[ $HAVE_LOCUST = 1 ] && peer locust "$tmp/locust.tsv"
echo "loadgen/wrk = ${RATIO}x (target >= 0.8x); loadgen self-check: $(cut -d' ' -f4 "$tmp/lg.tsv" | sort | uniq -c | tr '\n' ' ')"
