"""The `spa` command line: argparse only; every sub-command lives in its own module.

Each sub-command module exposes `register(subparsers)` which adds its parser and sets
`func=handler` on it; `main` dispatches to that handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spa.errors import SpaError

# Sub-command modules, each with `register(subparsers)`; a module that does not exist yet is
# skipped so partial installs still run the rest.
_COMMAND_MODULES = ("spa.cli.bundle", "spa.cli.experiment")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="spa", description="Structured Pruning Adapters: prune, adapt, bundle, switch."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spa` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpaError as error:
        print(f"spa: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
