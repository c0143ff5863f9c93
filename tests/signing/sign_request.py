#!/usr/bin/env python3
"""Signs an HTTP request with hmac-sha256 using PyPI's http-message-signatures, an RFC 9421
implementation independent of keyward, and prints what a gateway would hand to VerifySignature:
the signature base and the signature (both base64), the Signature-Input and Signature headers the
library set, and every header of the signed request.

usage: sign_request.py KEY_ID SECRET_HEX CREATED_UNIX NONCE
           [--method M] [--url URL] [--body TEXT | --no-body] [--no-digest]
           [--header 'Name: value']... [--cover COMPONENT]...

Without options: POST https://api.example.com/orders?page=1 with a JSON body, covering
@method, @authority, @target-uri and (the library adds it for a body) content-digest.
--no-digest signs without the body, so the signature covers no content-digest (the request still
has its body). Each --cover is a component name, or a serialized one with parameters such as
'"@query-param";name="page"'.
"""

import argparse
import base64
import datetime
import hashlib
import json

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
    parser = argparse.ArgumentParser()
    parser.add_argument("key_id")
    parser.add_argument("secret_hex")
    parser.add_argument("created", type=int)
    parser.add_argument("nonce")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--url", default="https://api.example.com/orders?page=1")
    parser.add_argument("--body", default='{"order": 42}')
    parser.add_argument("--no-body", action="store_true")
    parser.add_argument("--no-digest", action="store_true")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--cover", action="append")
    args = parser.parse_args()

    body = None if args.no_body else args.body.encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    request = requests.Request(args.method, args.url, data=body, headers=headers).prepare()
    secret = bytes.fromhex(args.secret_hex)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=OneKey(args.key_id, secret))
    prepared = signer.prepare(
        request,
        key_id=args.key_id,
        created=datetime.datetime.fromtimestamp(args.created, tz=datetime.timezone.utc),
        nonce=args.nonce,
        covered_component_ids=tuple(args.cover or ("@method", "@authority", "@target-uri")),
        body=None if args.no_digest else body,
    )
    signature = algorithms.HMAC_SHA256(private_key=secret).sign(prepared.signature_base)
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
                "body_sha256": base64.b64encode(hashlib.sha256(body or b"").digest()).decode(),
                "headers": {name.lower(): value for name, value in request.headers.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
