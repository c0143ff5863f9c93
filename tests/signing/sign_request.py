#!/usr/bin/env python3
"""Signs an HTTP request with hmac-sha256 using PyPI's http-message-signatures, an RFC 9421
implementation independent of keyward, and prints what a gateway would hand to VerifySignature:
the signature base and the signature (both base64), and the Signature-Input and Signature
headers the library set.

usage: sign_request.py KEY_ID SECRET_HEX CREATED_UNIX NONCE
"""

import base64
import datetime
import hashlib
import json
import sys

import requests
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms


class OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key_id, secret):
        self.key_id, self.secret = key_id, secret

    def resolve_private_key(self, key_id):
        assert key_id == self.key_id
        return self.secret

    def resolve_public_key(self, key_id):
        return self.resolve_private_key(key_id)


def main():
    key_id, secret_hex, created, nonce = sys.argv[1:5]
    body = b'{"order": 42}'
    request = requests.Request(
        "POST", "https://api.example.com/orders?page=1", data=body, headers={"Content-Type": "application/json"}
    ).prepare()
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=OneKey(key_id, bytes.fromhex(secret_hex)))
    prepared = signer.prepare(
        request,
        key_id=key_id,
        created=datetime.datetime.fromtimestamp(int(created), tz=datetime.timezone.utc),
        nonce=nonce,
        covered_component_ids=("@method", "@authority", "@target-uri"),
        body=body,
    )
    signature = algorithms.HMAC_SHA256(private_key=bytes.fromhex(secret_hex)).sign(prepared.signature_base)
    signer.apply(request, prepared, signature)
    header = request.headers["Signature"]
    label, _, armored = header.partition("=")
    assert label == "pyhms" and armored.startswith(":") and armored.endswith(":"), header
    print(
        json.dumps(
            {
                "signature_base": base64.b64encode(prepared.signature_base).decode(),
                "signature": armored.strip(":"),
                "signature_input": request.headers["Signature-Input"],
                "signature_header": header,
                "content_digest": request.headers.get("Content-Digest", ""),
                "body_sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
            }
        )
    )


if __name__ == "__main__":
    main()
