"""``hexdispatch token``: mint a bearer token signed with the local secret."""

from __future__ import annotations

import argparse
import time

from server.auth import Role, mint_token
from server.config import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hexdispatch token",
        description="Print a JWT for the secret in HEXDISPATCH_JWT_SECRET or .hexdispatch/jwt_secret.",
    )
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--sub", required=True, help="the subject: customer, driver or account id")
    parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default 7 days)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    ttl = args.ttl if args.ttl is not None else settings.token_ttl_s
    print(mint_token(settings.resolved_jwt_secret(), args.role, args.sub, now=int(time.time()), ttl_s=ttl))
    return 0
