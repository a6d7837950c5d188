"""``hexdispatch serve``: run the server on embedded defaults or on configured services.

With no ``DATABASE_URL`` an embedded Postgres is started under
``.hexdispatch/pgdata`` (its data survives restarts); with no ``RAY_ADDRESS``
a local Ray is started. Both are stopped on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os

from server.config import Settings
from server.db import EmbeddedPostgres, migrate_sync


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hexdispatch serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO

    import uvicorn

    from server.app import create_app

    settings = Settings.from_env()
    embedded = None
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.home / "pgdata")
            settings = settings.with_(database_url=embedded.start())
            os.environ["DATABASE_URL"] = settings.database_url
        migrate_sync(settings.database_url)
        settings = settings.with_(migrate_on_start=False)
        settings.resolved_jwt_secret()  # create the local secret before anyone asks for a token
        uvicorn.run(
            create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
            lifespan="on", ws_max_size=64 * 1024,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
