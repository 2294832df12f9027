#!/usr/bin/env bash
# Inference benchmark (see docs/performance.md, "Inference"): the guarded path against raw
# tract in process, end-to-end latency and saturation over the Unix socket, and throughput
# against an onnxruntime-based v2 server over loopback TCP, all measured in one run; prints
# ratios. Reports, never fails on the figures.
#
#   scripts/bench-inference.sh                           # 5 s phases, 5 rounds
#   BENCH_SECS=2 BENCH_ROUNDS=3 scripts/bench-inference.sh   # quick run
#
# Environment (passed through to the bench):
#   BENCH_SECS         length of each load phase in seconds (default 5)
#   BENCH_ROUNDS       interleaved rounds of the in-process and throughput comparisons (default 5)
#   BENCH_CONNECTIONS  closed-loop connections (default 8)
#
# The onnxruntime server (daemon/benches/ort_server.py) runs in .venv-bench, made by
# `scripts/pyenv.sh bench` from tests/fixtures/requirements-bench.txt (pip, pinned).
# Measure on an otherwise quiet machine: the load generator, mintd and the reference server
# share the same cores.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

BENCH_PYTHON="$(scripts/pyenv.sh bench | tail -n1)"
export BENCH_PYTHON

load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)"
echo "bench-inference.sh: load average before the build: $load" >&2

# Build first (lto, codegen-units=1: minutes on a cold target dir), so the build does not
# overlap the measurement.
cargo bench -p mintd --bench inference --no-run
exec cargo bench -p mintd --bench inference "$@"
