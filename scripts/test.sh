#!/usr/bin/env bash
# The whole test suite: formatting, lints, the advisory audit, and every test against real
# parts (real files, real processes, openssl, pycose in a venv, tract on real ONNX models).
# Heavy fuzzing has its own command (scripts/fuzz.sh), the benchmark too (scripts/bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS" >&2; }

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
step "done"
