#!/usr/bin/env python3
"""Independent COSE_Sign implementation (pycose) for mintd's interop tests.

mintd's bundle header is a COSE_Sign (CBOR tag 98) over the CBOR manifest, one signature per
signer, each with protected header {1: alg, 4: kid}, kid = SHA-256 of the signer's raw 32-byte
Ed25519 public key. This tool checks both directions against a third-party library:

  verify HEADER_FILE PUB_PEM [PUB_PEM...]
      HEADER_FILE holds the tag-98 COSE_Sign exactly as it sits in the bundle. For each SPKI
      PEM public key, find the signatures whose kid (protected or unprotected header, label 4)
      is SHA-256(raw public key) and verify them with pycose. Prints ONE JSON line on stdout:
          {"ok": bool, "verified_kids": [hex, ...], "payload_sha256": hex|null}
      (plus "error": "..." when the input could not be processed). Exit status 0 only if
      every given key verified at least one signature; 1 if some key did not; 2 on bad
      input (unreadable key, not a tag-98 COSE_Sign, ...). Per-signature details on stderr.

  sign PAYLOAD_FILE OUT_FILE --key PRIV_PEM [--key PRIV_PEM...] [--alg -8|-19] [--kid-unprotected]
      Write a tag-98 COSE_Sign with the payload bytes embedded (opaque to this tool), an empty
      body protected header, and one signature per key, each with protected header
      {1: alg, 4: kid}. --kid-unprotected moves the kid to the signature's unprotected header
      (alg stays protected) to exercise verifiers that look in both buckets.

  selftest
      Generate keys with openssl, sign, verify, and check that flipping any single byte of the
      header, a missing signer and an untrusted key make verify fail. Exit 0 if all hold.

Keys are what `openssl genpkey -algorithm ed25519` (PKCS#8 PEM) and `openssl pkey -pubout`
(SPKI PEM) produce; they are loaded with `cryptography`, which pycose depends on.

Algorithms: EdDSA (-8) is native to pycose 1.1.0. Ed25519 (-19, RFC 9864) is not; when pycose
lacks it this tool registers a tiny pycose algorithm for -19 that does exactly what -8 does
with an Ed25519 key (verify/sign with the raw key via `cryptography`). Without that
registration pycose would refuse to even decode a header that contains a -19 signature.

Known pycose 1.1.0 quirk: for a COSE_Signature whose protected header is EMPTY, pycose leaves
sign_protected out of the Sig_structure (4 elements instead of RFC 9052's 5), so it cannot
verify such signatures made by a conforming implementation. mintd always puts alg and kid in
the signature's protected header, which avoids the issue; this tool warns when it meets one.

Run with the project venv:  "$(scripts/pyenv.sh | tail -n1)" tests/interop/pycose_tool.py ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pycose import headers
from pycose.algorithms import CoseAlgorithm, EdDSA
from pycose.keys import OKPKey
from pycose.messages import SignMessage
from pycose.messages.signer import CoseSignature

COSE_SIGN_TAG = 98
ALG_EDDSA = -8
ALG_ED25519 = -19


def _ensure_ed25519_alg() -> type:
    """Return pycose's algorithm class for -19, registering a raw-key shim if it has none."""
    known = CoseAlgorithm.get_registered_classes()
    if ALG_ED25519 in known:
        return known[ALG_ED25519]

    @CoseAlgorithm.register_attribute()
    class Ed25519Alg(CoseAlgorithm):
        """Ed25519 (RFC 9864, -19): EdDSA fixed to the Ed25519 curve."""

        identifier = ALG_ED25519
        fullname = "ED25519"

        @classmethod
        def sign(cls, key: OKPKey, data: bytes) -> bytes:
            if key.crv.fullname != "ED25519":
                raise ValueError(f"alg -19 needs an Ed25519 key, got {key.crv}")
            return Ed25519PrivateKey.from_private_bytes(key.d).sign(data)

        @classmethod
        def verify(cls, key: OKPKey, data: bytes, signature: bytes) -> bool:
            if key.crv.fullname != "ED25519":
                raise ValueError(f"alg -19 needs an Ed25519 key, got {key.crv}")
            try:
                Ed25519PublicKey.from_public_bytes(key.x).verify(signature, data)
                return True
            except InvalidSignature:
                return False

    return Ed25519Alg


ED25519_ALG = _ensure_ed25519_alg()
ALGS = {ALG_EDDSA: EdDSA, ALG_ED25519: ED25519_ALG}


class InputError(Exception):
    """The tool's input (file, key, message) is unusable: exit status 2."""


_quiet = False


def log(msg: str) -> None:
    if not _quiet:
        print(f"pycose_tool: {msg}", file=sys.stderr)


def read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from e


def load_public(path: str) -> bytes:
    """Raw 32-byte Ed25519 public key from an SPKI PEM file."""
    try:
        key = serialization.load_pem_public_key(read_bytes(path, "public key"))
    except ValueError as e:
        raise InputError(f"{path}: not a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private(path: str) -> tuple[bytes, bytes]:
    """(raw private seed, raw public key) from a PKCS#8 PEM file."""
    try:
        key = serialization.load_pem_private_key(read_bytes(path, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    d = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return d, x


def kid_of(raw_public: bytes) -> bytes:
    return hashlib.sha256(raw_public).digest()


def decode_cose_sign(data: bytes) -> SignMessage:
    """Strictly check the outer shape (tag 98, 4-array, nothing trailing), then let pycose decode."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 raises several types for malformed input
        raise InputError(f"header is not valid CBOR: {e}") from e
    if fp.tell() != len(data):
        raise InputError(f"{len(data) - fp.tell()} trailing bytes after the COSE_Sign")
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN_TAG:
        tag = item.tag if isinstance(item, cbor2.CBORTag) else None
        raise InputError(f"header is not a tag-{COSE_SIGN_TAG} COSE_Sign (tag {tag})")
    if not isinstance(item.value, list) or len(item.value) != 4:
        raise InputError("COSE_Sign must be an array of 4 elements")
    try:
        msg = SignMessage.decode(data)
    except Exception as e:
        raise InputError(f"pycose cannot decode the COSE_Sign: {e}") from e
    if msg.payload is None:
        raise InputError("COSE_Sign has a detached (nil) payload; mintd embeds the manifest")
    return msg


def signature_kid(sig: CoseSignature) -> bytes | None:
    kid = sig.phdr.get(headers.KID)
    return kid if kid is not None else sig.uhdr.get(headers.KID)


def verify_one(sig: CoseSignature, raw_public: bytes, index: int) -> bool:
    alg = sig.get_attr(headers.Algorithm)
    alg_id = getattr(alg, "identifier", alg)
    if alg_id not in ALGS:
        log(f"signature {index}: unsupported alg {alg_id!r}")
        return False
    if not sig.phdr:
        log(f"signature {index}: empty protected header; pycose 1.1.0 omits it from the "
            "Sig_structure (non-conforming), so a conforming signature will not verify here")
    sig.key = OKPKey(crv="ED25519", x=raw_public)
    try:
        ok = bool(sig.verify_signature())
    except Exception as e:
        log(f"signature {index}: verification error: {e}")
        return False
    finally:
        sig.key = None
    log(f"signature {index}: alg {alg_id} kid {kid_of(raw_public).hex()}: {'valid' if ok else 'INVALID'}")
    return ok


def verify_header(data: bytes, keys: list[tuple[str, bytes]]) -> tuple[bool, list[str], bytes]:
    """(every key verified a signature, verified kids in hex, payload). Raises InputError."""
    msg = decode_cose_sign(data)
    verified: list[str] = []
    all_ok = True
    for path, raw in keys:
        kid = kid_of(raw)
        matches = [(i, s) for i, s in enumerate(msg.signers) if signature_kid(s) == kid]
        if not matches:
            log(f"{path}: no signature with kid {kid.hex()}")
        # Check every matching signature (no short-circuit) so stderr shows them all.
        results = [verify_one(s, raw, i) for i, s in matches]
        if any(results):
            if kid.hex() not in verified:
                verified.append(kid.hex())
        else:
            all_ok = False
    return all_ok, verified, msg.payload


def cmd_verify(args: argparse.Namespace) -> int:
    keys = [(path, load_public(path)) for path in args.pub]
    all_ok, verified, payload = verify_header(read_bytes(args.header, "header"), keys)
    print(json.dumps({
        "ok": all_ok,
        "verified_kids": verified,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }))
    return 0 if all_ok else 1


def cmd_sign(args: argparse.Namespace) -> int:
    payload = read_bytes(args.payload, "payload")
    alg = ALGS[args.alg]
    signers = []
    for path in args.key:
        d, x = load_private(path)
        kid = kid_of(x)
        phdr = {headers.Algorithm: alg}
        uhdr = {}
        (uhdr if args.kid_unprotected else phdr)[headers.KID] = kid
        signers.append(CoseSignature(phdr=phdr, uhdr=uhdr, key=OKPKey(crv="ED25519", d=d, x=x)))
        log(f"{path}: signing with alg {args.alg}, kid {kid.hex()}")

    msg = SignMessage(phdr={}, uhdr={}, payload=payload, signers=signers)
    encoded = msg.encode(tag=True)
    try:
        Path(args.out).write_bytes(encoded)
    except OSError as e:
        raise InputError(f"cannot write {args.out}: {e.strerror}") from e
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    global _quiet
    import subprocess
    import tempfile

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)

    failures = []

    def check(cond: bool, what: str) -> None:
        print(f"{'ok  ' if cond else 'FAIL'} {what}")
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name in ("a", "b", "c"):
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", t / f"{name}.key"], check=True)
            subprocess.run(["openssl", "pkey", "-in", t / f"{name}.key", "-pubout", "-out", t / f"{name}.pub"],
                           check=True)
        payload = cbor2.dumps({"format": 1, "name": "selftest", "sequence": 7})
        (t / "payload").write_bytes(payload)
        pubs = [str(t / "a.pub"), str(t / "b.pub")]
        for alg in ("-8", "-19"):
            hdr = t / f"h{alg}"
            r = run("sign", str(t / "payload"), str(hdr), "--key", str(t / "a.key"), "--key", str(t / "b.key"),
                    "--alg", alg)
            check(r.returncode == 0, f"sign alg {alg}")
            r = run("verify", str(hdr), *pubs)
            out = json.loads(r.stdout)
            check(r.returncode == 0 and out["ok"] and len(out["verified_kids"]) == 2
                  and out["payload_sha256"] == hashlib.sha256(payload).hexdigest(), f"verify alg {alg}")
            r = run("verify", str(hdr), *pubs, str(t / "c.pub"))
            check(r.returncode == 1 and not json.loads(r.stdout)["ok"], f"alg {alg}: key c has no signature -> exit 1")
            # Tampering, in-process (a subprocess per byte would take minutes).
            data = hdr.read_bytes()
            keys = [(p, load_public(p)) for p in pubs]
            survivors = []
            _quiet = True
            try:
                for i in range(len(data)):
                    bad = bytearray(data)
                    bad[i] ^= 0x01
                    try:
                        if verify_header(bytes(bad), keys)[0]:
                            survivors.append(i)
                    except InputError:
                        pass
            finally:
                _quiet = False
            check(not survivors, f"alg {alg}: each of {len(data)} single-bit flips fails verify {survivors or ''}")
    print("selftest:", "FAILED" if failures else "passed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pycose_tool.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("verify", help="verify a tag-98 COSE_Sign header against public keys")
    v.add_argument("header", metavar="HEADER_FILE")
    v.add_argument("pub", metavar="PUB_PEM", nargs="+")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("sign", help="sign payload bytes into a tag-98 COSE_Sign")
    s.add_argument("payload", metavar="PAYLOAD_FILE")
    s.add_argument("out", metavar="OUT_FILE")
    s.add_argument("--key", metavar="PRIV_PEM", action="append", required=True)
    s.add_argument("--alg", type=int, choices=sorted(ALGS, reverse=True), default=ALG_EDDSA)
    s.add_argument("--kid-unprotected", action="store_true",
                   help="put the kid in each signature's unprotected header")
    s.set_defaults(func=cmd_sign)

    t = sub.add_parser("selftest", help="openssl keys -> sign -> verify -> tamper checks")
    t.set_defaults(func=cmd_selftest)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        log(str(e))
        if args.cmd == "verify":
            print(json.dumps({"ok": False, "verified_kids": [], "payload_sha256": None, "error": str(e)}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
