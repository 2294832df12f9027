#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need, only if missing.
# Works on a fresh Debian 12 with just the Rust toolchain; needs root (or sudo) to install.
set -euo pipefail
packages=(gcc libc6-dev pkg-config zstd openssl libssl-dev coreutils systemd util-linux mosquitto mosquitto-clients)
# A python3 that can make venvs (pyenv or Debian's) is enough; otherwise Debian's.
if ! (command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null); then
  packages+=(python3 python3-venv python3-pip)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: run as root: apt-get install -y ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q "${missing[@]}" >/dev/null
}
