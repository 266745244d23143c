#!/usr/bin/env bash
# The main job on the embedded default: `loadgen demo` starts mock-upstream and the
# gateway (default config, nothing else needed) on free local ports, runs the Meetinity
# baseline mix through the gateway for a minute, prints the SLA verdict, writes the HTML
# report and CSVs into ./reports/, then stops everything. Extra arguments go to
# `loadgen demo` (e.g. `scripts/demo.sh --run-time 15s --out /tmp/reports`).
# Exit status: 0 SLA held, 1 missed, 2 usage error.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
exec target/release/loadgen demo "$@"
