"""`spa.cli.main`: every failure becomes one `spa: error:` line (in-process, fast checks)."""

from __future__ import annotations

import argparse
import errno

import pytest

from spa.cli import error_message, main
from spa.errors import ConfigError


def test_error_message_names_the_file_of_an_os_error() -> None:
    error = PermissionError(errno.EACCES, "Permission denied", "/data/out/table.md")
    assert error_message(error) == "/data/out/table.md: Permission denied"


def test_error_message_joins_a_multi_line_third_party_message() -> None:
    error = RuntimeError("shape mismatch\n  expected (3, 4)\n\n  got (4, 3)\n")
    assert error_message(error) == "RuntimeError: shape mismatch expected (3, 4) got (4, 3)"


def test_error_message_shortens_huge_messages() -> None:
    text = error_message(ValueError("x" * 5000))
    assert len(text) <= 400 + len(" (rerun with --debug for the traceback)")
    assert text.endswith("(rerun with --debug for the traceback)")


def test_error_message_keeps_spa_messages_as_they_are() -> None:
    assert error_message(ConfigError("config key 'train.lr': bad")) == "config key 'train.lr': bad"


def _failing_parser(error: BaseException):
    from spa.cli import build_parser as real

    def build() -> argparse.ArgumentParser:
        parser = real()

        def fail(args: argparse.Namespace) -> int:
            raise error

        parser.set_defaults(func=fail)
        return parser

    return build


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("torch: boom\nsecond line"),
        TypeError("bad type"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "configs"),
        KeyError("unexpected"),
    ],
)
def test_main_turns_any_error_into_one_line(monkeypatch, capsys, error) -> None:
    import spa.cli

    monkeypatch.delenv("SPA_DEBUG", raising=False)
    monkeypatch.setattr(spa.cli, "build_parser", _failing_parser(error))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spa: error: ")
    assert "Traceback" not in err


def test_main_reraises_with_debug(monkeypatch) -> None:
    import spa.cli

    monkeypatch.setattr(spa.cli, "build_parser", _failing_parser(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug"])
    monkeypatch.setenv("SPA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main([])


def test_demo_takes_the_language_model_demo_as_its_kind() -> None:
    from spa.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo"]).kind == "digits"
    arguments = parser.parse_args(["demo", "lm", "--quick"])
    assert (arguments.kind, arguments.quick, arguments.output) == ("lm", True, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "bogus"])
