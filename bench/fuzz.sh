#!/usr/bin/env bash
# Runs one cargo-fuzz target of fuzz/ on stable Rust (docs/fuzzing.md).
#
#   bench/fuzz.sh list               the targets
#   bench/fuzz.sh TARGET SECONDS     fuzz TARGET for SECONDS, then print its executions and
#                                    whether it crashed
#
# Installs cargo-fuzz when it is missing. Builds with `-s none` (no sanitizer, so no nightly):
# release code with debug assertions and overflow checks. The fuzzer reads the checked-in
# seeds of fuzz/corpus/TARGET/ and writes what it grows into fuzz/grown/TARGET/ (not
# committed); a crash lands in fuzz/artifacts/TARGET/. Environment: FUZZ_RUNS (stop after
# that many executions, if sooner than SECONDS), FUZZ_MAX_LEN (bytes, default 8192),
# FUZZ_RSS_MB (default 2048), FUZZ_PREBUILT=1 (run the binary `cargo fuzz build -s none` left,
# without building: for runs while the sources change), CARGO_TARGET_DIR as cargo reads it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"

targets() {
    ls "$fuzz/fuzz_targets" | sed -n 's/\.rs$//p' | sort
}

usage() {
    echo "usage: bench/fuzz.sh list | TARGET SECONDS" >&2
    exit 2
}

[ $# -ge 1 ] || usage
if [ "$1" = list ]; then
    targets
    exit 0
fi
[ $# -eq 2 ] || usage
target="$1"
seconds="$2"
targets | grep -qx -- "$target" || { echo "unknown target $target; bench/fuzz.sh list" >&2; exit 2; }
case "$seconds" in ''|*[!0-9]*) echo "SECONDS must be a whole number" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

grown="$fuzz/grown/$target"
mkdir -p "$grown" "$fuzz/artifacts/$target"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

cd "$fuzz"
options=(
    -max_total_time="$seconds"
    -max_len="${FUZZ_MAX_LEN:-8192}"
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}"
    -print_final_stats=1
    ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"}
)
status=0
if [ -n "${FUZZ_PREBUILT:-}" ]; then
    # The binary `cargo fuzz build -s none` left, run as `cargo fuzz run` would, unbuilt.
    binary="${CARGO_TARGET_DIR:-$fuzz/target}/$(rustc -vV | sed -n 's/^host: //p')/release/$target"
    "$binary" -artifact_prefix="$fuzz/artifacts/$target/" "${options[@]}" "$grown" "corpus/$target" 2>&1 \
        | tee "$log" || status=$?
else
    cargo fuzz run -s none "$target" "$grown" "corpus/$target" -- "${options[@]}" 2>&1 \
        | tee "$log" || status=$?
fi

execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
crashes="$(ls "$fuzz/artifacts/$target" | grep -c -E '^(crash|leak|timeout|oom)-' || true)"
echo "target=$target seconds=$seconds execs=${execs:-?} exec_per_sec=${rate:-?} corpus=$(ls "$grown" | wc -l) artifacts=$crashes"
if [ "$status" -ne 0 ]; then
    echo "CRASH: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
fi
echo "no crash"
