#!/usr/bin/env bash
# `just fuzz [SECONDS]`: each of the agent's fuzz targets (agent/src/fuzz.rs)
# under libFuzzer for SECONDS (default 60), with AddressSanitizer; new
# inputs that widen coverage land in fuzz/corpus/<target>/, which is then
# minimised (cargo fuzz cmin) and kept in the repo: agent/tests/fuzz_corpus.rs
# replays it on every test run. A crash stops the run and leaves its input
# in fuzz/artifacts/<target>/ (make it a unit test beside the parser).
# Prints executions, coverage and crashes per target.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
cargo_fuzz_version=0.13.1
# libFuzzer's instrumentation needs the nightly toolchain (-Zsanitizer).
# This machine's image carries one; elsewhere rustup installs today's.
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain (rustup, minimal profile)"
    rustup toolchain install nightly --profile minimal
fi
echo "fuzz: $(rustup run nightly rustc --version)"
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
# The agent without its `ebpf` feature: no eBPF object built (with the
# fuzzer's flags it could not be), and the targets do not load one.
echo "fuzz: building the targets (nightly, release, ASan)"
cargo +nightly fuzz build -O 2>&1 | grep -vE '^\s*(Compiling|Finished)' || true
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^mock-accel-fuzz$')
printf '%-12s %12s %10s %8s %6s %8s\n' target executions exec/s cov ft crashes
total=0 crashes=0
for t in $targets; do
    log=$(mktemp)
    status=0
    cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    crashed=0
    if [ "$status" != 0 ]; then
        crashed=1
        crashes=$((crashes + 1))
        echo "fuzz: $t FAILED (exit $status); its input is in fuzz/artifacts/$t/:" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 10 >&2
    fi
    printf '%-12s %12s %10s %8s %6s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashed"
    total=$((total + ${runs:-0}))
    rm -f "$log"
    cargo +nightly fuzz cmin -O "$t" >/dev/null 2>&1 || echo "fuzz: cmin $t failed (corpus left as is)" >&2
done
printf '%-12s %12s %29s\n' total "$total" "$crashes crashed"
[ "$crashes" = 0 ]
