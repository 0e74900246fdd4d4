#!/usr/bin/env python3
"""Mints demo delegation tokens signed by the demo identity provider (PyJWT).

For the quickstart and the end-to-end tests only: the demo keys in deploy/demo/keys/ are
public, so tokens they sign prove nothing outside this demo.

    pip install 'pyjwt[crypto]'
    python3 deploy/demo/mint_token.py --sub alice --claim employee=true \
        --act travel-agent --scope book_flight

--act may repeat: the first is the current actor, the last the earliest one, so
`--act a --act b` gives {"sub": "alice", "act": {"sub": "a", "act": {"sub": "b"}}}.
"""
import argparse
import base64
import json
import pathlib
import sys
import time
import uuid

import jwt

HERE = pathlib.Path(__file__).resolve().parent
KEYS = {"RS256": "demo-rs256", "ES256": "demo-es256"}


def claim_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sub", required=True, help="the subject: the user the agent acts for")
    p.add_argument("--act", action="append", default=[], help="an actor, current first; repeat to nest")
    p.add_argument("--scope", action="append", default=[], help="a scope; repeatable")
    p.add_argument("--claim", action="append", default=[], help="name=value (JSON or string); repeatable")
    p.add_argument("--iss", default="https://idp.demo.onbehalf.dev")
    p.add_argument("--aud", default="service-b")
    p.add_argument("--ttl", type=int, default=300, help="seconds until exp; negative for an expired token")
    p.add_argument("--alg", default="RS256", help="RS256, ES256, or none (an unsigned token)")
    p.add_argument("--key", help="PEM private key (default: the demo key for --alg)")
    p.add_argument("--kid", help="key id (default: the demo key's)")
    args = p.parse_args()

    now = int(time.time())
    claims = {"iss": args.iss, "sub": args.sub, "aud": args.aud, "iat": now,
              "exp": now + args.ttl, "jti": str(uuid.uuid4())}
    for raw in args.claim:
        name, _, value = raw.partition("=")
        claims[name] = claim_value(value)
    if args.scope:
        claims["scope"] = " ".join(args.scope)
    act = None
    for actor in reversed(args.act):
        act = {"sub": actor, **({"act": act} if act else {})}
    if act:
        claims["act"] = act

    if args.alg == "none":
        enc = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
        print(f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}.")
        return 0
    kid = args.kid or KEYS.get(args.alg)
    key_path = pathlib.Path(args.key) if args.key else HERE / "keys" / f"{KEYS[args.alg]}.pem"
    token = jwt.encode(claims, key_path.read_bytes(), algorithm=args.alg, headers={"kid": kid})
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
