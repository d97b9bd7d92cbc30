#!/usr/bin/env python3
"""The baseline of the Nitro document benchmark (reproducible/bench-nitro.sh): verify each
attestation document with pycose + cryptography as a Python verifier would — decode the
COSE_Sign1, check every certificate of the cabundle chain (signature by the previous one,
validity at the document's time), the root's SHA-256 pin, then the ES384 signature by the leaf
— and print verifications per second per document as JSON.

Usage: bench-nitro-pycose.py SECONDS DOC... (each DOC timed for about SECONDS seconds)."""

import hashlib
import json
import sys
import time
from datetime import datetime, timezone

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.keys import EC2Key
from pycose.keys.curves import P384
from pycose.messages import Sign1Message

ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"


def verify(doc: bytes) -> None:
    msg = Sign1Message.decode(doc if doc[0] == 0xD2 else b"\xd2" + doc)
    payload = cbor2.loads(msg.payload)
    at = datetime.fromtimestamp(payload["timestamp"] / 1000, tz=timezone.utc)
    bundle = [x509.load_der_x509_certificate(c) for c in payload["cabundle"]]
    if hashlib.sha256(payload["cabundle"][0]).hexdigest() != ROOT_SHA256:
        raise ValueError("root")
    leaf = x509.load_der_x509_certificate(payload["certificate"])
    chain = bundle + [leaf]
    for i, cert in enumerate(chain):
        issuer = chain[i - 1] if i else cert
        issuer.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
        if not (cert.not_valid_before_utc <= at <= cert.not_valid_after_utc):
            raise ValueError("validity")
    nums = leaf.public_key().public_numbers()
    msg.key = EC2Key(crv=P384, x=nums.x.to_bytes(48, "big"), y=nums.y.to_bytes(48, "big"))
    if not msg.verify_signature():
        raise ValueError("signature")


def main() -> None:
    seconds = float(sys.argv[1])
    out = {}
    for path in sys.argv[2:]:
        doc = open(path, "rb").read()
        verify(doc)  # once, and it must pass
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            verify(doc)
            n += 1
        out[path.rsplit("/", 1)[-1]] = n / (time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
