#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each (default 60).
#
#   scripts/fuzz.sh                         all targets, 60 s each
#   FUZZ_SECONDS=20 scripts/fuzz.sh manifest config
#
# Environment:
#   FUZZ_SECONDS    time per target (default 60)
#   FUZZ_SANITIZER  address (default) or none; address works on stable through RUSTC_BOOTSTRAP
#   FUZZ_JOBS       libFuzzer worker processes per target (default 1)
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only flags (-Zsanitizer,
# sanitizer-coverage), which RUSTC_BOOTSTRAP=1 unlocks on stable. cargo-fuzz is installed with
# `cargo install --locked cargo-fuzz` if missing. The seed corpora are (re)written first
# (fuzz/seeds.sh); libFuzzer keeps its finds in fuzz/corpus/<target>/ and writes crashing
# inputs to fuzz/artifacts/<target>/. Exits non-zero if any target found a crash.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$REPO/fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
JOBS="${FUZZ_JOBS:-1}"
ALL_TARGETS=(bundle_reader manifest config measurement_log infer_request fleet_view fleet_command)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

export RUSTC_BOOTSTRAP=1
# The fuzz crate is not a workspace member: keep its build apart from the workspace's.
export CARGO_TARGET_DIR="$FUZZ/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

"$FUZZ/seeds.sh"

cd "$FUZZ"
failed=()
summary=()
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$FUZZ/artifacts/$target/last-run.log"
    echo "== $target: ${SECONDS_EACH}s, sanitizer $SANITIZER" >&2
    status=0
    cargo fuzz run --sanitizer "$SANITIZER" --jobs "$JOBS" "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n1 || true)"
    execs="$(grep -E '^stat::number_of_executed_units' "$log" | tail -n1 | awk '{print $2}' || true)"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        tail -n 60 "$log" >&2
        summary+=("$target: FAILED (exit $status), see $log and fuzz/artifacts/$target/")
    else
        summary+=("$target: ok, ${execs:-?} execs, ${done_line:-no summary line}")
    fi
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
