#!/usr/bin/env bash
# The library tests of every crate, cross-built for a board's target and run under qemu-user:
# the code that ships to ARM boards (tract's NEON kernels, mintd's rules for them, the scalar
# pools and pads, the guard, the bundle parsers) checked on the boards' instruction set.
#
#   cross/test.sh [aarch64|armv7]     (default aarch64; scripts/test.sh runs aarch64)
#
# armv7 could not be checked on 2026-11-23: the mirror's armhf security index was broken
# (size mismatch), so libssl-dev:armhf did not match the installed libssl3.
#
# Installs what it needs, only if missing: the target's standard library (rustup), the cross
# linker, the target's libc and OpenSSL (Debian multiarch) and qemu-user-static. Needs root or
# sudo for apt. Integration tests (which start mintd, mosquitto and other processes) stay
# native.
#
# qemu runs the binaries against the multiarch libc under / (`-L /`). Debian 12's cross
# sysroot (/usr/aarch64-linux-gnu) makes every thread spawn hang under qemu 7.2 and 10.0 on
# this project's machines, so it is only used to link.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=cross/env.sh
source cross/env.sh "${1:-aarch64}"

echo "cross: library tests for $triple under $($qemu --version | head -n 1)" >&2
cargo test --workspace --lib --locked --target "$triple"
