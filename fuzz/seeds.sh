#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/:
#   bundle_reader   bundles signed by the fuzzing key (fuzz/src/lib.rs), valid under the
#                   target's policy, so mutations of their payload get past the signature
#   manifest        the manifests of those bundles (CBOR)
#   config          config/mintd.toml
#   measurement_log a small well-formed measurement log
#   fleet_command   signed-command payloads (install, rollback, report) for the target to sign
#   fleet_view      broker messages as `mintctl fleet watch` gets them (topic NUL payload,
#                   messages separated by 0xff)
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

# fleet_command: first byte 1 = a JSON payload that the target signs with its trusted key, so
# mutations reach the checks behind the signature (0 = raw envelope, 2 = CBOR payload).
mkdir -p "$CORPUS/fleet_command"
sha=$(printf 'bundle' | sha256sum | cut -d' ' -f1)
printf '\001{"v":1,"command":"install","args":{"url":"https://h.example:8443/m-2.mint?t=1","sha256":"%s","size":18056},"nonce":"0123456789abcdef0123","issued_at":1790000000,"expires_at":1790000600,"target":"dev-1"}' "$sha" >"$CORPUS/fleet_command/install.json"
printf '\001{"v":1,"command":"rollback","args":{"name":"m"},"nonce":"0123456789abcdef0124","issued_at":1790000000,"expires_at":1790000600,"target":["class:cam","arch:aarch64","device:dev-2"]}' >"$CORPUS/fleet_command/rollback.json"
printf '\001{"v":1,"command":"report","nonce":"0123456789abcdef0125","issued_at":1790000000,"expires_at":1790000600,"target":"*"}' >"$CORPUS/fleet_command/report.json"

# fleet_view: a status, an inventory, an event and a telemetry message of one device.
mkdir -p "$CORPUS/fleet_view"
{
  printf 'mint/v1/d/status\000{"state":"online","device":"d","model":"m","model_version":"1","health":"ok","outbox_dropped":0,"unix_ms":1}\377'
  printf 'mint/v1/d/inventory\000{"models":[{"name":"m","version":"1","sequence":1,"state":"committed"}]}\377'
  printf 'mint/v1/d/events\000{"id":"d:1","seq":1,"type":"rolled_back","severity":"warning"}\377'
  printf 'mint/v1/d/telemetry\000{"outbox_dropped":2,"requests_total":5}\377'
  printf 'mint/v1/d/status\000{"state":"offline","reason":"connection lost","unix_ms":2}'
} >"$CORPUS/fleet_view/device.bin"

for t in bundle_reader manifest config measurement_log infer_request fleet_command fleet_view; do
    echo "$t: $(find "$CORPUS/$t" -type f | wc -l) file(s) in $CORPUS/$t"
done
