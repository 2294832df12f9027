#!/usr/bin/env bash
# cargo audit against the offline RustSec snapshot in ../shared/advisory-db (no network).
set -euo pipefail
cd "$(dirname "$0")/.."
db="${MINT_ADVISORY_DB:-../shared/advisory-db}"
if [ ! -d "$db" ]; then
  echo "audit: advisory snapshot $db not found (set MINT_ADVISORY_DB); skipping" >&2
  exit 0
fi
if ! command -v cargo-audit >/dev/null; then
  echo "audit: installing cargo-audit (once, ~5 min)" >&2
  cargo install --locked --quiet cargo-audit
fi
cargo audit --db "$db" --no-fetch --deny warnings
