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

arch="${1:-aarch64}"
case "$arch" in
  aarch64) triple=aarch64-unknown-linux-gnu deb=arm64 gnu=aarch64-linux-gnu qemu=qemu-aarch64-static ;;
  armv7) triple=armv7-unknown-linux-gnueabihf deb=armhf gnu=arm-linux-gnueabihf qemu=qemu-arm-static ;;
  *)
    echo "cross/test.sh: unknown target '$arch': use aarch64 or armv7" >&2
    exit 2
    ;;
esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "cross/test.sh: run as root (apt installs the $deb libraries and qemu)" >&2
    exit 1
  }
  sudo="sudo"
fi

rustup target list --installed | grep -qx "$triple" || {
  echo "cross: installing the Rust standard library for $triple" >&2
  rustup target add "$triple"
}

packages=("gcc-$gnu" "libc6-dev-$deb-cross" "libc6:$deb" "libssl-dev:$deb" qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! dpkg --print-foreign-architectures | grep -qx "$deb"; then
    $sudo dpkg --add-architecture "$deb"
  fi
  # A mirror in the middle of a sync fails one index of the update: try the install with the
  # lists there are, and once more after a fresh update.
  install() {
    $sudo apt-get update -q >/dev/null 2>&1 || echo "cross: apt-get update reported errors" >&2
    $sudo apt-get install -y -q "${missing[@]}" >/dev/null
  }
  install || { sleep 20; install; }
fi

# cargo's per-target variables: the linker, the C compiler of build scripts, OpenSSL found
# through the target's pkg-config files, and qemu as the runner of the test binaries. The
# compiler's warnings are errors, as clippy's are natively: code that only the board's target
# compiles (or no longer uses) is caught here.
var="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
export "CARGO_TARGET_${var}_LINKER=$gnu-gcc"
export "CARGO_TARGET_${var}_RUSTFLAGS=-D warnings"
export "CARGO_TARGET_${var}_RUNNER=$qemu -L /"
export "CC_${triple//-/_}=$gnu-gcc"
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR="/usr/lib/$gnu/pkgconfig:/usr/share/pkgconfig"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "cross: library tests for $triple under $($qemu --version | head -n 1)" >&2
cargo test --workspace --lib --locked --target "$triple"
