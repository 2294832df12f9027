#!/usr/bin/env bash
# Bundle verification benchmark (see docs/performance.md, "Bundle verification"):
# verify + unpack of a signed bundle against `zstd -dc payload.zst | sha256sum` on the same
# zstd frame, measured in one run; prints throughput ratios and peak RSS. Reports, never fails
# on the figures.
#
#   scripts/bench.sh                       # 1 GiB model, best of 3
#   BENCH_GIB=0.25 BENCH_RUNS=2 scripts/bench.sh   # quick run
#
# Environment (passed through to the bench):
#   BENCH_GIB     model size in GiB, fractions allowed (default 1)
#   BENCH_RUNS    best-of-N, interleaved (default 3)
#   BENCH_TMPDIR  where the temporary files go (default <target>/bench-tmp; about 3.5x the
#                 model size at the peak; keep it on a disk, not a tmpfs)
#
# Needs zstd and sha256sum (coreutils); installs zstd with apt-get when missing. openssl and
# GNU time (/usr/bin/time) are used for context figures when present.
# Measure on an otherwise quiet machine: the comparison is relative, but a concurrent build
# steals unevenly from the one-process and the two-process sides.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if ! command -v zstd >/dev/null 2>&1; then
    echo "bench.sh: zstd not found, installing it with apt-get" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y -qq zstd >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq zstd; }
fi
command -v sha256sum >/dev/null 2>&1 || { echo "bench.sh: sha256sum (coreutils) is required" >&2; exit 1; }

export BENCH_GIB="${BENCH_GIB:-1}"
export BENCH_RUNS="${BENCH_RUNS:-3}"

load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)"
echo "bench.sh: BENCH_GIB=$BENCH_GIB BENCH_RUNS=$BENCH_RUNS, load average before the build: $load" >&2

# Build first (lto, codegen-units=1: minutes on a cold target dir), so the build does not
# overlap the measurement.
cargo bench -p mint-updater --bench verify --no-run
exec cargo bench -p mint-updater --bench verify "$@"
