"""The bare ceiling: one websocket process that receives and decodes msgpack GPS frames, and nothing else."""

from __future__ import annotations

import os
import sys

from bench.baselines import BaselineApp, serve


class Ceiling(BaselineApp):
    takes_frames_synchronously = True  # the fastest way frames reach an app under uvicorn

    def take_driver_frame(self, driver_id: str, message: dict) -> None:
        if message.get("type") == "gps":
            self.stats["gps"] += 1

    async def driver_frame(self, driver_id: str, message: dict) -> None:
        self.take_driver_frame(driver_id, message)


def create_app() -> Ceiling:
    return Ceiling(os.environ.get("HEXDISPATCH_JWT_SECRET") or None, os.environ.get("BENCH_STATS_FILE"))


if __name__ == "__main__":
    serve(create_app(), sys.argv[1:])
