#!/usr/bin/env bash
# The main job: `mintd demo`, the self-contained tour on built-in defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo run --locked --quiet -p mintd --bin mintd -- demo "$@"
