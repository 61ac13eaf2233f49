"""The `spa` command line: argparse only; every sub-command lives in its own module.

Each sub-command module exposes `register(subparsers)` which adds its parser and sets
`func=handler` on it; `main` dispatches to that handler. `main` never shows a traceback: every
failure becomes one `spa: error: ...` line on stderr and a non-zero exit code (`--debug` or
`SPA_DEBUG=1` re-raises to show the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from spa.errors import SpaError

# Sub-command modules, each with `register(subparsers)`; a module that does not exist yet is
# skipped so partial installs still run the rest.
_COMMAND_MODULES = (
    "spa.cli.bundle",
    "spa.cli.experiment",
    "spa.serve.cli",
    "spa.cli.prune_shards",
)

# Longest error message printed (third-party messages can hold whole graphs or tracebacks).
_MAX_MESSAGE = 400
_DEBUG_HINT = "rerun with --debug for the traceback"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    from spa._version import __version__

    parser = argparse.ArgumentParser(
        prog="spa", description="Structured Pruning Adapters: prune, adapt, bundle, switch."
    )
    parser.add_argument("--version", action="version", version=f"spa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also: SPA_DEBUG=1)",
    )
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


def error_message(error: BaseException) -> str:
    """One line describing `error` for the user: what failed and, for files, which one.

    Args:
        error: the exception that stopped a command.

    Returns:
        The message without a trailing newline; never more than one line.
    """
    if isinstance(error, SpaError):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else ""
        text = f"{where}: {error.strerror}" if where else error.strerror
        if error.filename2 is not None:
            text += f" (-> {error.filename2})"
    elif isinstance(error, ValueError | TypeError | RuntimeError | OSError | ImportError):
        text = f"{type(error).__name__}: {error}"
    else:
        text = f"unexpected {type(error).__name__}: {error} ({_DEBUG_HINT})"
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + f"… ({_DEBUG_HINT})"
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spa` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SPA_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spa: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one place that turns any failure into one line
        if debug:
            raise
        print(f"spa: error: {error_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
