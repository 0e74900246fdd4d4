#!/usr/bin/env python3
"""Service B for the quickstart: answers every request with what it received, as JSON.

    python3 deploy/demo/echo_upstream.py [port]   # default 8080, on 127.0.0.1

With minting on, onbehalf replaces the agent's delegation token with a short-lived token it
signed; the answer shows that token's claims under "token_claims" (decoded for display only:
a real Service B verifies it, e.g. with Envoy's jwt_authn against onbehalf's
/.well-known/jwks.json).
"""
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def claims_of(authorization):
    """The payload of a bearer JWT, unverified; None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None


class Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers,
                           "token_claims": claims_of(headers.get("authorization"))},
                          indent=2).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args) -> None:
        sys.stderr.write("echo: " + fmt % args + "\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
