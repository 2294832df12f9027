#!/usr/bin/env python3
"""Independent COSE_Sign1 implementation (pycose) for mintd's signed fleet commands.

A fleet command is a tagged COSE_Sign1 (tag 18) with protected header {1: alg, 4: kid, 3:
content type}, kid = SHA-256 of the signer's raw 32-byte Ed25519 public key, and the command
payload embedded (docs/telemetry.md). This tool checks both directions against pycose, so an
operator can sign commands with other tools and audit ours:

  sign PAYLOAD_FILE OUT_FILE --key PRIV_PEM [--content-type TEXT] [--kid-unprotected]
      Write a tag-18 COSE_Sign1 over the payload bytes, alg EdDSA (-8).
  verify ENVELOPE_FILE PUB_PEM
      Verify with pycose; prints ONE JSON line {"ok": bool, "payload": text|null,
      "content_type": text|null}; exit 0 only if the signature verified.

Keys: `openssl genpkey -algorithm ed25519` (PKCS#8 PEM) / `openssl pkey -pubout` (SPKI PEM),
read through pycose_tool.py's loaders. Run with the project venv (scripts/pyenv.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pycose import headers  # noqa: E402
from pycose.algorithms import EdDSA  # noqa: E402
from pycose.keys import OKPKey  # noqa: E402
from pycose.messages import Sign1Message  # noqa: E402

from pycose_tool import kid_of, load_private, load_public  # noqa: E402


def sign(args: argparse.Namespace) -> int:
    d, x = load_private(args.key)
    payload = Path(args.payload).read_bytes()
    phdr = {headers.Algorithm: EdDSA, headers.ContentType: args.content_type}
    uhdr = {}
    if args.kid_unprotected:
        uhdr[headers.KID] = kid_of(x)
    else:
        phdr[headers.KID] = kid_of(x)
    msg = Sign1Message(phdr=phdr, uhdr=uhdr, payload=payload)
    msg.key = OKPKey(crv="ED25519", d=d, x=x)
    Path(args.out).write_bytes(msg.encode(tag=True))
    return 0


def verify(args: argparse.Namespace) -> int:
    x = load_public(args.pub)
    try:
        msg = Sign1Message.decode(Path(args.envelope).read_bytes())
        msg.key = OKPKey(crv="ED25519", x=x)
        ok = bool(msg.verify_signature())
    except Exception as e:  # pycose raises many types for bad input
        print(json.dumps({"ok": False, "payload": None, "content_type": None, "error": str(e)}))
        return 1
    ct = msg.phdr.get(headers.ContentType)
    print(json.dumps({
        "ok": ok,
        "payload": msg.payload.decode("utf-8", "replace") if msg.payload else None,
        "content_type": ct if isinstance(ct, str) else None,
    }))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign")
    s.add_argument("payload")
    s.add_argument("out")
    s.add_argument("--key", required=True)
    s.add_argument("--content-type", default="application/json")
    s.add_argument("--kid-unprotected", action="store_true")
    v = sub.add_parser("verify")
    v.add_argument("envelope")
    v.add_argument("pub")
    args = p.parse_args()
    return sign(args) if args.cmd == "sign" else verify(args)


if __name__ == "__main__":
    sys.exit(main())
