"""The ``hexdispatch`` console script: a router to subcommands.

Each subcommand lives in its own module with its own argument parser and a
``main(argv) -> int`` entry point, so importing the CLI stays cheap (Ray,
numba and the web stack are only imported by the subcommand that needs them).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.serve", "run the dispatch server (HTTP API and websockets)"),
    "token": ("server.tokens", "mint a JWT for the local secret"),
    "replay": ("bench.replay", "replay MDRP instances offline through the dispatch core"),
    "simulate": ("clients.simulate", "run a live simulated city against a running server"),
    "bench": ("bench.cli", "benchmarks: peak, nearest, mdrp, catalog, quality, speed, fuzz"),
}


def usage(commands: dict[str, tuple[str, str]], prog: str, heading: str) -> str:
    width = max(len(name) for name in commands)
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", f"{heading}:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in commands.items()]
    lines += ["", f"Run '{prog} COMMAND --help' for a command's options."]
    return "\n".join(lines)


def route(argv: list[str], commands: dict[str, tuple[str, str]], prog: str, heading: str) -> int:
    """Run ``argv[0]``'s module ``main(argv[1:])`` from ``commands``; return its exit code."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage(commands, prog, heading))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{usage(commands, prog, heading)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """Route ``hexdispatch COMMAND ...`` to COMMAND's module; return its exit code."""
    return route(list(sys.argv[1:] if argv is None else argv), SUBCOMMANDS, "hexdispatch", "commands")


if __name__ == "__main__":
    sys.exit(main())
