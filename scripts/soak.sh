#!/usr/bin/env bash
# The long crash-safety campaign: the power cut test (daemon/tests/power_cut.rs) with 1000
# SIGKILLs of the real mintd at random points of install, activation, health check, trial,
# commit, rollback and startup recovery, each followed by a restart and the safety checks.
#
#   scripts/soak.sh                              # 1000 kills, the test's fixed seed
#   MINT_POWER_CUT_KILLS=5000 scripts/soak.sh    # longer
#   MINT_POWER_CUT_SEED=0x1234 scripts/soak.sh   # another campaign (the seed is printed)
#
# A failure prints the seed, the iteration, the kill point and the daemon's log, and keeps
# the state directory for inspection. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINT_POWER_CUT_KILLS="${MINT_POWER_CUT_KILLS:-1000}"
cargo test --locked -p mintd --test power_cut -- --nocapture "$@"
