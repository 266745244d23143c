#!/usr/bin/env bash
# The gateway's fault suite: builds the release binaries, runs every scenario against
# them (gateway, mock-upstream, loadgen and, for the Redis scenarios, a redis-server of its
# own, all on free 127.0.0.1 ports), prints the table and writes it as JSON
# (target/reliability/results.json). Exit 1 when a scenario misses a bar.
#
#   tests/reliability/run.sh                     # every scenario, full durations (~4 min)
#   tests/reliability/run.sh --short             # the short version (CI)
#   tests/reliability/run.sh --only sigterm      # one scenario (repeatable; --list)
#   tests/reliability/run.sh --soak              # and the 30 min soak (nightly)
#   tests/reliability/run.sh --soak --only soak --soak-time 5m
#
# RELIABILITY_PROFILE=debug uses the debug binaries (cargo build --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${RELIABILITY_PROFILE:-release}"
if [[ "$profile" == release ]]; then
    cargo build --release -p gateway -p e2e -p loadgen --bins
else
    cargo build -p gateway -p e2e -p loadgen --bins
fi
# Idle-connection scenario: 10,000 client connections need a high open-file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "target/$profile/reliability" --bin-dir "target/$profile" "$@"
