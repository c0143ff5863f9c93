#!/usr/bin/env python3
"""Verifies an HTTP request signed by keyward-client's RequestSigner with PyPI's
http-message-signatures, an RFC 9421 implementation independent of keyward: the signature
(hmac-sha256) and, for a request with a body, its Content-Digest.

usage: verify_signature.py SECRET_HEX < request.json
  request.json: {"method": ..., "url": ..., "headers": [[name, value], ...], "body_b64": ...}
Prints the covered components and exits 0 when the request verifies; prints the error and exits 1
when it does not.
"""

import base64
import json
import sys

import requests
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms


class Shared(HTTPSignatureKeyResolver):
    def __init__(self, secret):
        self.secret = secret

    def resolve_public_key(self, key_id):
        return self.secret


def main():
    secret = bytes.fromhex(sys.argv[1])
    message = json.load(sys.stdin)
    body = base64.b64decode(message["body_b64"])
    request = requests.Request(message["method"], message["url"], data=body or None).prepare()
    request.headers.clear()
    for name, value in message["headers"]:
        request.headers[name] = value
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Shared(secret))
    try:
        results = verifier.verify(request, body=body if body else None)
    except Exception as error:  # the library raises its own errors for every refusal
        print(f"refused: {type(error).__name__}: {error}")
        return 1
    for result in results:
        print("verified", " ".join(result.covered_components))
    return 0


if __name__ == "__main__":
    sys.exit(main())
