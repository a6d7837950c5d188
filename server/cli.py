"""The ``hexdispatch`` console script: a router to subcommands.

Each subcommand lives in its own module with its own argument parser and a
``main(argv) -> int`` entry point, so importing the CLI stays cheap (Ray,
numba and the web stack are only imported by the subcommand that needs them).
A setting that cannot be used (:class:`server.config.SettingsError`) ends any
subcommand with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.serve", "run the dispatch server (HTTP API and websockets)"),
    "token": ("server.tokens", "mint a JWT for the local secret"),
    "replay": ("bench.replay", "replay MDRP instances offline through the dispatch core"),
    "simulate": ("clients.simulate", "run a live simulated city against a running server"),
    "bench": ("bench.cli", "benchmarks: peak, nearest, mdrp, catalog, quality, speed, fuzz"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` that states every option's default: options taking a value get ``(default: X)`` unless their
    help already says it; flags (on when given) and required options have none to state."""

    def _format_action(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if (action.nargs != 0 and action.option_strings and not action.required
                and action.default is not argparse.SUPPRESS and "default" not in help_.lower()):
            shown = "none" if action.default is None else "%(default)s"
            action = copy.copy(action)
            action.help = f"{help_} (default: {shown})" if help_ else f"default: {shown}"
        return super()._format_action(action)


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` text: reST roles and literal markup (``:func:`x```, ````x````) made plain."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return text.replace("``", "")


def parser_for(prog: str, doc: str | None, paragraphs: int = 1, **kwargs) -> argparse.ArgumentParser:
    """An argument parser for ``prog`` described by the first ``paragraphs`` of ``doc``, in plain text, whose
    help shows every option's default."""
    description = "\n\n".join((doc or "").strip().split("\n\n")[:paragraphs])
    return argparse.ArgumentParser(prog=prog, description=plain_text(description), formatter_class=HelpFormatter,
                                   **kwargs)


def usage(commands: dict[str, tuple[str, str]], prog: str, heading: str) -> str:
    width = max(len(name) for name in commands)
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", f"{heading}:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in commands.items()]
    lines += ["", f"Run '{prog} COMMAND --help' for a command's options."]
    return "\n".join(lines)


def route(argv: list[str], commands: dict[str, tuple[str, str]], prog: str, heading: str) -> int:
    """Run ``argv[0]``'s module ``main(argv[1:])`` from ``commands``; return its exit code (2, with the usage on
    stderr, when no command is given)."""
    if argv and argv[0] in {"-h", "--help", "help"}:
        print(usage(commands, prog, heading))
        return 0
    if not argv:
        print(usage(commands, prog, heading), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{usage(commands, prog, heading)}", file=sys.stderr)
        return 2
    from server.config import SettingsError

    module = importlib.import_module(commands[name][0])
    try:
        return int(module.main(rest) or 0)
    except SettingsError as exc:
        print(f"{prog} {name}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Route ``hexdispatch COMMAND ...`` to COMMAND's module; return its exit code."""
    return route(list(sys.argv[1:] if argv is None else argv), SUBCOMMANDS, "hexdispatch", "commands")


if __name__ == "__main__":
    sys.exit(main())
