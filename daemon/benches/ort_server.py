#!/usr/bin/env python3
"""A minimal Open Inference Protocol v2 server on onnxruntime: the reference of the
throughput comparison in daemon/benches/inference.rs. Not part of mintd.

    ort_server.py --model NAME=PATH [--model NAME=PATH ...] [--port 0] [--intra-op-threads 1]

Serves on 127.0.0.1 (HTTP/1.1, keep-alive, one thread per connection: the standard library's
ThreadingHTTPServer; onnxruntime releases the GIL while it runs):

  GET  /v2/health/ready
  POST /v2/models/{name}/infer   v2 JSON and the binary tensor data extension
                                 (Inference-Header-Content-Length, binary_data_size,
                                 binary_data_output / binary_data), as tritonclient sends them

It checks nothing that onnxruntime does not check itself (no ranges, no finiteness, no rate
limit, no deadline). Prints "listening 127.0.0.1:PORT" on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort

DTYPES = {
    "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}

SESSIONS: dict[str, ort.InferenceSession] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *_args) -> None:  # quiet
        pass

    def reply(self, status: int, body: bytes, header_length: int | None = None) -> None:
        self.send_response(status)
        if header_length is None:
            self.send_header("Content-Type", "application/json")
        else:
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Inference-Header-Content-Length", str(header_length))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, message: str) -> None:
        self.reply(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        if self.path == "/v2/health/ready":
            self.reply(200, b'{"ready":true}')
        else:
            self.error(404, f"no such endpoint: GET {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] != "infer":
            self.error(404, f"no such endpoint: POST {self.path}")
            return
        session = SESSIONS.get(parts[2])
        if session is None:
            self.error(404, f"model {parts[2]!r} is not served")
            return
        try:
            self.infer(session, parts[2], body)
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            self.error(400, str(e))

    def infer(self, session: ort.InferenceSession, name: str, body: bytes) -> None:
        header_length = self.headers.get("Inference-Header-Content-Length")
        n = int(header_length) if header_length is not None else len(body)
        request = json.loads(body[:n])
        offset = n
        feed = {}
        for inp in request["inputs"]:
            dtype = DTYPES[inp["datatype"]]
            size = (inp.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                array = np.frombuffer(body, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                      offset=offset)
                offset += size
            else:
                array = np.asarray(inp["data"], dtype=dtype)
            feed[inp["name"]] = array.reshape(inp["shape"])
        binary_all = bool((request.get("parameters") or {}).get("binary_data_output", False))
        wanted = request.get("outputs")
        names = [o.name for o in session.get_outputs()]
        if wanted is None:
            selected = [(o, binary_all) for o in names]
        else:
            selected = [(o["name"], (o.get("parameters") or {}).get("binary_data", binary_all))
                        for o in wanted]
        results = session.run([o for o, _ in selected], feed)
        outputs, blobs = [], []
        for (out_name, binary), value in zip(selected, results):
            entry = {"name": out_name, "datatype": NAMES[value.dtype], "shape": list(value.shape)}
            if binary:
                blob = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = value.reshape(-1).tolist()
            outputs.append(entry)
        answer = {"model_name": name, "model_version": "1", "outputs": outputs}
        if "id" in request:
            answer["id"] = request["id"]
        text = json.dumps(answer, separators=(",", ":")).encode()
        if blobs:
            self.reply(200, text + b"".join(blobs), header_length=len(text))
        else:
            self.reply(200, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    for spec in args.model:
        name, _, path = spec.partition("=")
        SESSIONS[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
