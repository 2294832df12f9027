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

mkdir -p "$CORPUS/infer_request"
printf '%s' '{"id":"a","inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,-1,-0.5,0,0.5,1]},{"name":"mask","datatype":"INT64","shape":[1,4],"data":[1,0,1,0]}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}' \
    >"$CORPUS/infer_request/json.json"
# Binary extension: `H<json length>\n<json><16 f32 + 4 i64 little-endian>`.
json='{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}},{"name":"mask","datatype":"INT64","shape":[1,4],"parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}'
{ printf 'H%d\n%s' "${#json}" "$json"; head -c 96 /dev/zero; } >"$CORPUS/infer_request/binary.bin"

for t in bundle_reader manifest config measurement_log infer_request; do
    echo "$t: $(find "$CORPUS/$t" -type f | wc -l) file(s) in $CORPUS/$t"
done
