#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails on any
# crash, panic, timeout or sanitizer report. What CI runs after the tests.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (30) each
#   scripts/fuzz.sh path config     only these targets
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 30)
#   FUZZ_TARGET_DIR  cargo target dir of the fuzz build (default:
#                    $CARGO_TARGET_DIR if set, else target/fuzz)
#   FUZZ_SANITIZER   cargo-fuzz --sanitizer (default none: the gateway is
#                    safe Rust but for the allocator shim, so AddressSanitizer
#                    finds little that panics and overflow checks don't,
#                    and its build of every dependency doubled CI's time;
#                    `FUZZ_SANITIZER=address` for a deeper local run)
#
# Targets are built with debug assertions (integer overflow panics), so an
# arithmetic overflow on wire numbers is a crash here.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/),
# copied to a temporary directory so what the run discovers is not left in
# the checkout. A crashing input is saved under fuzz/artifacts/<target>/
# (ignored by git) and printed in hex; turn it into a regression test or a
# seed file. Needs the nightly toolchain and cargo-fuzz, installed when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TERM_COLOR=never

seconds=${FUZZ_SECONDS:-30}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target/fuzz}}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

start=$(date +%s)
sanitizer=${FUZZ_SANITIZER:-none}
echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer, debug assertions) into $target_dir"
(cd fuzz && cargo +nightly fuzz build --sanitizer "$sanitizer" --debug-assertions --target-dir "$target_dir")
echo "built in $(($(date +%s) - start)) s"

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=$work/corpus-$t
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
    log=$work/$t.log
    echo "== $t: ${seconds} s from $(find "$corpus" -type f | wc -l) seeds"
    status=0
    "$target_dir/$triple/release/$t" "$corpus" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        summary+=("$(printf '%-14s FAILED (exit %s) after %s executions' "$t" "$status" "${execs:-?}")")
        echo "-- $t failed (exit $status); end of its log:"
        tail -n 60 "$log"
        for a in $(grep -o "fuzz/artifacts/$t/[A-Za-z0-9_.-]*" "$log" | sort -u || true); do
            [ -f "$a" ] || continue
            echo "-- input $a (hex):"
            od -An -tx1 -v "$a" | head -n 64
        done
    else
        summary+=("$(printf '%-14s %10s executions  %7s/s  cov %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
    fi
done

echo
echo "fuzz summary (${seconds} s per target, $(($(date +%s) - start)) s in all):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}" >&2
    exit 1
fi
