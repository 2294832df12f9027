#!/usr/bin/env python3
"""Drive a running mintd with NVIDIA's tritonclient.http (Open Inference Protocol v2).

    tritonclient_check.py HOST:PORT MODEL REFERENCE_JSON

REFERENCE_JSON is tests/fixtures/models/mlp_reference.json (v2 tensors: input "input"
FP32 [1,16], output "output" FP32 [1,4]). The script only reports what the client saw; the
Rust test (daemon/tests/triton_client.rs) judges it. Prints ONE JSON line on stdout:

    {"live", "ready", "model_ready": bool, "metadata": {...},
     "json": [[4 floats], ...]         one JSON inference per reference case (binary off)
     "json_wire": {...}                the first JSON answer's body as the client parsed it
     "binary": [[4 floats], ...]       all cases as one batch, tritonclient's defaults
                                       (binary input, binary_data_output)
     "binary_wire": {...}
     "errors": {CASE: {"status": str, "message": str} | {"unexpected": str}}}

Error cases: an unknown model, a wrong shape, a NaN input (binary: JSON cannot carry it).
Each must raise InferenceServerException; a success is reported as "unexpected".
Exit 0 when the report was written (whatever it says), 2 on bad arguments.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def reference(path: str) -> list[np.ndarray]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return [
        np.asarray(case["inputs"][0]["data"], dtype=np.float32).reshape(1, 16)
        for case in doc["cases"]
    ]


def error_case(client: httpclient.InferenceServerClient, model: str, array: np.ndarray,
               binary: bool) -> dict:
    inp = httpclient.InferInput("input", list(array.shape), "FP32")
    inp.set_data_from_numpy(array, binary_data=binary)
    try:
        client.infer(model, [inp])
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return {"unexpected": "the inference succeeded"}


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    url, model, ref_path = sys.argv[1:]
    cases = reference(ref_path)
    client = httpclient.InferenceServerClient(url=url, network_timeout=30.0)
    report: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model),
    }

    # JSON both ways: binary_data=False on the input and on the requested output.
    answers = []
    for i, x in enumerate(cases):
        inp = httpclient.InferInput("input", [1, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        out = httpclient.InferRequestedOutput("output", binary_data=False)
        result = client.infer(model, [inp], outputs=[out], request_id=f"json-{i}")
        if i == 0:
            report["json_wire"] = result.get_response()
        answers.append(result.as_numpy("output").reshape(-1).tolist())
    report["json"] = answers

    # tritonclient's defaults: binary input, no outputs listed (binary_data_output: true).
    batch = np.concatenate(cases, axis=0)
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    result = client.infer(model, [inp], request_id="binary")
    report["binary_wire"] = result.get_response()
    report["binary"] = result.as_numpy("output").tolist()

    nan = cases[0].copy()
    nan[0, 3] = np.nan
    report["errors"] = {
        "unknown_model": error_case(client, "no-such-model", cases[0], binary=False),
        "wrong_shape": error_case(client, model, cases[0].reshape(2, 8), binary=False),
        "nan_binary": error_case(client, model, nan, binary=True),
    }
    client.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
