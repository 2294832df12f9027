#!/usr/bin/env bash
# The whole test suite: formatting, lints, the advisory audit, and every test against real
# parts (real files, real processes, openssl, pycose in a venv, tract on real ONNX models).
# Heavy fuzzing has its own command (scripts/fuzz.sh), the benchmark too (scripts/bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS" >&2; }

# One full build, not an edit loop: incremental caches would only add 1.4 GB to the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
disk() { df -h --output=avail,target "$target_dir" | tail -n 1 | awk '{print $1 " free on " $2}'; }
printf 'disk: %s (a clean run writes about 3 GB under %s)\n' "$(disk)" "$target_dir" >&2

step "system packages"
scripts/deps.sh

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "advisories (offline snapshot)"
scripts/audit.sh

step "build"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked --no-fail-fast

# The boards' instruction set: every crate's library tests cross-built for aarch64 and run
# under qemu-user (MINTD_TEST_CROSS=0 leaves them out of a local run).
if [ "${MINTD_TEST_CROSS:-1}" != 0 ]; then
  step "library tests on aarch64 (qemu)"
  cross/test.sh aarch64
fi
step "done"
printf 'disk: %s; %s is %s\n' "$(disk)" "$target_dir" "$(du -sh "$target_dir" | cut -f1)" >&2
