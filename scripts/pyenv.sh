#!/usr/bin/env bash
# Make sure the project's Python virtualenv exists and matches
# tests/fixtures/requirements.txt, then print its python's path on the last stdout line.
#
#   PY=$(scripts/pyenv.sh | tail -n1)
#   PY=$(scripts/pyenv.sh triton | tail -n1)    # .venv-triton from requirements-triton.txt
#
# With a NAME, a separate venv .venv-NAME is made from tests/fixtures/requirements-NAME.txt:
# for tools whose pins clash with the main set (tritonclient wants ml_dtypes <= 0.5.4) or that
# only the benchmarks need (onnxruntime).
#
# Idempotent and cheap when nothing changed: the venv is created only if missing (or
# broken), and pip runs only when the sha256 of the requirements differs from the stamp
# kept in the venv. Quiet on success; on failure the relevant log goes to stderr.
#
# Environment: PYTHON   interpreter used to create the venv (default: python3)
#
# On a bare Debian 12, python3 may lack venv/ensurepip; then python3-venv is installed with
# apt-get (needs root), with an `apt-get update` only if the first install attempt fails.
# Concurrent invocations (parallel tests) serialise on a lock inside the venv directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${1:-}"
case "$NAME" in
    "") VENV="$REPO/.venv"; REQ="$REPO/tests/fixtures/requirements.txt" ;;
    *[!a-z0-9-]*) echo "pyenv.sh: bad venv name '$NAME' (a-z, 0-9, -)" >&2; exit 1 ;;
    *) VENV="$REPO/.venv-$NAME"; REQ="$REPO/tests/fixtures/requirements-$NAME.txt" ;;
esac
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
PIP_LOG="$VENV/pip.log"

die() { echo "pyenv.sh: $*" >&2; exit 1; }

[ -f "$REQ" ] || die "requirements not found: $REQ"
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (install python3)"

mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.lock"
    flock 9
fi

venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pip" >/dev/null 2>&1
}

# Remove a half-made venv but keep the directory (and the lock file we hold).
clear_venv() {
    rm -rf "$VENV/bin" "$VENV/lib" "$VENV/lib64" "$VENV/include" "$VENV/share" \
        "$VENV/pyvenv.cfg" "$STAMP" "$PIP_LOG"
}

make_venv() {
    local log="$1"
    clear_venv
    "$PYTHON" -m venv "$VENV" >"$log" 2>&1 && venv_ok
}

install_python3_venv() {
    local log="$1"
    command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q python3-venv >>"$log" 2>&1; then
        return 0
    fi
    apt-get update -q >>"$log" 2>&1 || return 1
    apt-get install -y -q python3-venv >>"$log" 2>&1
}

if ! venv_ok; then
    tmplog="$(mktemp)"
    trap 'rm -f "$tmplog"' EXIT
    if ! make_venv "$tmplog"; then
        echo "pyenv.sh: '$PYTHON -m venv' failed; installing python3-venv with apt-get" >>"$tmplog"
        if ! install_python3_venv "$tmplog" || ! make_venv "$tmplog"; then
            cat "$tmplog" >&2
            clear_venv
            die "could not create a virtualenv at $VENV with '$PYTHON' (need python3-venv)"
        fi
    fi
    rm -f "$tmplog"
    trap - EXIT
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    rm -f "$STAMP"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
            -r "$REQ" >"$PIP_LOG" 2>&1; then
        cat "$PIP_LOG" >&2
        die "pip install -r $REQ failed (log: $PIP_LOG)"
    fi
    echo "$want" >"$STAMP"
fi

echo "$VENV/bin/python"
