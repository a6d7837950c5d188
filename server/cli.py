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
}


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: hexdispatch COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'hexdispatch COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Route ``hexdispatch COMMAND ...`` to COMMAND's module; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"hexdispatch: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
