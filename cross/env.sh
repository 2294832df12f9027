# Sourced by cross/test.sh and cross/bench.sh with $1 the target (aarch64, the default, or
# armv7): installs what a cross build needs, only if missing (the target's standard library,
# the cross linker, the target's libc and OpenSSL from Debian multiarch, qemu-user-static), and
# exports cargo's variables for the target. Sets triple, deb, gnu and qemu.

arch="${1:-aarch64}"
case "$arch" in
  aarch64) triple=aarch64-unknown-linux-gnu deb=arm64 gnu=aarch64-linux-gnu qemu=qemu-aarch64-static ;;
  armv7) triple=armv7-unknown-linux-gnueabihf deb=armhf gnu=arm-linux-gnueabihf qemu=qemu-arm-static ;;
  *)
    echo "cross: unknown target '$arch': use aarch64 or armv7" >&2
    exit 2
    ;;
esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "cross: run as root (apt installs the $deb libraries and qemu)" >&2
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

