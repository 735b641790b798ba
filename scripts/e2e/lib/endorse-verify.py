#!/usr/bin/python3
"""A backend verifying an Endorse token offline, as a user's server would: PyJWT and the key set
arcd publishes (GET /v1/arcd/endorse/jwks), nothing of arcd's code. Used by scripts/e2e/endorse.sh.

    endorse-verify.py JWKS_FILE TOKEN [--tamper]

Prints the verified claims as JSON (exit 0), or `REJECTED <PyJWT exception>: <message>` (exit 3).
--tamper changes the endorsed IMSI in the payload first, keeping the signature: a forged token.
"""

import base64
import json
import sys

import jwt


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["soracom-endorse-claim"]["imsi"] = "001010000000001"
    return ".".join([header, b64url(json.dumps(claims).encode()), signature])


def main() -> int:
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] != "--tamper"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        key_set = jwt.PyJWKSet.from_dict(json.load(f))
    token = sys.argv[2].strip()
    if len(sys.argv) == 4:
        token = tampered(token)
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in key_set.keys if k.key_id == kid]
        if not keys:
            print(f"REJECTED NoSuchKey: no key {kid!r} in the set")
            return 3
        claims = jwt.decode(
            token,
            keys[0].key,
            algorithms=["RS256"],
            audience="soracom-endorse-audience",
            options={"require": ["exp", "iat", "nbf", "jti", "aud"]},
        )
    except jwt.PyJWTError as e:
        print(f"REJECTED {type(e).__name__}: {e}")
        return 3
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
