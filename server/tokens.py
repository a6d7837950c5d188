"""``hexdispatch token``: mint a bearer token signed with the server's secret.

The secret is HEXDISPATCH_JWT_SECRET, else the file jwt_secret in HEXDISPATCH_HOME
(.hexdispatch/ in the current directory): run it from the directory the server
runs in. It never makes up a secret of its own unless told to (--new-secret),
since a token signed with any other secret than the server's is refused (401).
"""

from __future__ import annotations

import sys
import time

from server.auth import Role, mint_token
from server.cli import parser_for
from server.config import Settings


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    parser = parser_for("hexdispatch token", __doc__, paragraphs=2)
    parser.add_argument("--role", required=True, choices=[r.value for r in Role], help="the token's role")
    parser.add_argument("--sub", required=True, help="the subject: customer, driver or account id")
    parser.add_argument("--ttl", type=int, default=settings.token_ttl_s, help="lifetime in seconds")
    parser.add_argument("--new-secret", action="store_true",
                        help="create the secret file when there is none (for a server not started yet)")
    args = parser.parse_args(argv)
    if args.new_secret:
        settings.resolved_jwt_secret()
    secret, source = settings.existing_jwt_secret()
    print(f"hexdispatch token: signed with {source}", file=sys.stderr)
    print(mint_token(secret, args.role, args.sub, now=int(time.time()), ttl_s=args.ttl))
    return 0
