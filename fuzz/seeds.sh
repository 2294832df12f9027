#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/:
#   bundle_reader   bundles signed by the fuzzing key (fuzz/src/lib.rs), valid under the
#                   target's policy, so mutations of their payload get past the signature
#   manifest        the manifests of those bundles (CBOR)
#   config          config/mintd.toml
#   measurement_log a small well-formed measurement log
# Idempotent; libFuzzer adds its own finds to the same directories.
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$FUZZ")"
CORPUS="$FUZZ/corpus"

# A normal (uninstrumented) build of the generator, in the fuzz crate's own target dir.
cargo run --quiet --manifest-path "$FUZZ/Cargo.toml" --example seeds -- "$CORPUS"

mkdir -p "$CORPUS/config" "$CORPUS/measurement_log"
cp "$REPO/config/mintd.toml" "$CORPUS/config/mintd.toml"
d1=$(printf 'manifest' | sha256sum | cut -d' ' -f1)
d2=$(printf 'model' | sha256sum | cut -d' ' -f1)
cat >"$CORPUS/measurement_log/two-entries.log" <<LOG
{"index":0,"pcr":23,"kind":"manifest","name":"kws","version":"1.2.0","sequence":7,"digest":"$d1","unix_time":1700000000}
{"index":1,"pcr":23,"kind":"model","name":"kws","version":"1.2.0","sequence":7,"digest":"$d2","unix_time":1700000000}
LOG
# The same log torn in the middle of its last line (what a crash leaves).
head -c 200 "$CORPUS/measurement_log/two-entries.log" >"$CORPUS/measurement_log/torn.log"

for t in bundle_reader manifest config measurement_log; do
    echo "$t: $(find "$CORPUS/$t" -type f | wc -l) file(s) in $CORPUS/$t"
done
