#!/usr/bin/env bash
# The inference benchmark for a board (docs/performance.md, "Guarded inference"): cross-builds
# the bench and the release mintd and mintctl for the board's target, and packs them with the
# model fixtures, the onnxruntime server of part C and a run script into
# target/<triple>/mintd-bench.tar.gz.
#
#   cross/bench.sh [aarch64|armv7]      (default aarch64)
#
# On the board (Linux with glibc and OpenSSL 3, e.g. Debian 12; util-linux for taskset; python3
# with venv and pip for part C, which is skipped without them):
#
#   tar xzf mintd-bench.tar.gz && cd mintd-bench && ./run.sh
#
# run.sh takes the bench's environment (BENCH_SECS, BENCH_ROUNDS, BENCH_PARTS, ...; see
# daemon/benches/inference.rs) and prints the same report as scripts/bench-inference.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=cross/env.sh
source cross/env.sh "${1:-aarch64}"

echo "cross: building the inference bench for $triple (release: minutes)" >&2
bench="$(cargo bench -p mintd --bench inference --no-run --locked --target "$triple" \
  --message-format=json-render-diagnostics |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "inference" \
            and m.get("executable"):
        print(m["executable"])')"
[ -x "$bench" ] || {
  echo "cross: no bench executable found for $triple" >&2
  exit 1
}

out="target/$triple/mintd-bench"
rm -rf "$out"
mkdir -p "$out/models"
cp "$bench" "$out/inference"
cp "target/$triple/release/mintd" "target/$triple/release/mintctl" "$out/"
cp tests/fixtures/models/*.onnx "$out/models/"
cp daemon/benches/ort_server.py tests/fixtures/requirements-bench.txt "$out/"
cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# The inference benchmark on this machine (made by cross/bench.sh). Part C needs onnxruntime:
# a venv with the pinned requirements is made next to this script on the first run, when
# python3 can make one; otherwise part C is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${BENCH_PYTHON:-}" ] && command -v python3 >/dev/null; then
  if [ ! -x "$here/venv/bin/python" ]; then
    echo "run.sh: installing onnxruntime into $here/venv (pip)" >&2
    if python3 -m venv "$here/venv" &&
      "$here/venv/bin/pip" install -q -r "$here/requirements-bench.txt"; then
      :
    else
      echo "run.sh: no onnxruntime: part C is skipped" >&2
      rm -rf "$here/venv"
    fi
  fi
  [ -x "$here/venv/bin/python" ] && export BENCH_PYTHON="$here/venv/bin/python"
fi
echo "run.sh: $(uname -m), $(nproc) CPUs, $(grep -m1 -E 'model name|Model' /proc/cpuinfo || true)" >&2
cd "$here"
BENCH_HOME="$here" exec "$here/inference" --bench
RUN
chmod +x "$out/run.sh"
tar -C "target/$triple" -czf "target/$triple/mintd-bench.tar.gz" mintd-bench
echo "cross: target/$triple/mintd-bench.tar.gz ($(du -h "target/$triple/mintd-bench.tar.gz" | cut -f1))" >&2
