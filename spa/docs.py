"""Documentation tables generated from the registries: criteria and adapter kinds.

The README holds each table between `<!-- spa-docs:NAME -->` and `<!-- /spa-docs:NAME -->`;
`python -m spa.docs README.md` rewrites them, and a test checks that the README equals the
generated tables, so a newly registered criterion or kind is documented or the test fails.
Only spa's own registrations are listed (entries defined under the `spa` package), not ones a
user or a test registers at run time.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

from spa.errors import ConfigError
from spa.experiments.files import atomic_write_text


def _summary(obj: object) -> str:
    """The first line of `obj`'s docstring."""
    lines = (obj.__doc__ or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _ours(obj: object) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == "spa"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def criteria_table() -> str:
    """Markdown table of the registered channel (`CRITERIA`) and block (`BLOCK_CRITERIA`)
    criteria: name, what it prunes and its docstring's summary."""
    from spa.pruning.block_criteria import BLOCK_CRITERIA
    from spa.pruning.criteria import CRITERIA

    rows = [
        [f"`{name}`", prunes, _summary(registry.get(name))]
        for prunes, registry in (("channels", CRITERIA), ("blocks", BLOCK_CRITERIA))
        for name in registry.names()
        if _ours(registry.get(name))
    ]
    return _table(["`pruning.criterion`", "Prunes", "What it scores"], rows)


def kinds_table() -> str:
    """Markdown table of the registered adapter kinds (`ADAPTER_KINDS`) and the `spa run`
    presets: name, what it prunes, its table label, config class and fields."""
    from spa.adapters import ADAPTER_KINDS
    from spa.experiments.presets import ADAPTER_PRESETS, pruning_of

    rows = []
    for name in ADAPTER_KINDS.names():
        kind = ADAPTER_KINDS.get(name)
        if _ours(kind.config_type):
            rows.append(_kind_row(name, kind.config_type, kind.label, pruning_of(name)))
    for name in ADAPTER_PRESETS.names():
        preset = ADAPTER_PRESETS.get(name)
        config_type = ADAPTER_KINDS.get(preset.kind).config_type
        row = _kind_row(name, config_type, preset.label, pruning_of(name))
        row[-1] = f"preset: {preset.summary} (`{preset.kind}`)"
        rows.append(row)
    header = ["`adapter.kind`", "Prunes", "Table label", "Config (fields)", "What it is"]
    return _table(header, rows)


def _kind_row(name: str, config_type: type, label: str | None, pruning: str) -> list[str]:
    fields = ", ".join(f.name for f in dataclasses.fields(config_type) if f.name != "head_modules")
    return [
        f"`{name}`",
        pruning,
        f"`{label or name}`",
        f"`{config_type.__name__}` ({fields})",
        _summary(config_type),
    ]


TABLES: dict[str, Callable[[], str]] = {"criteria": criteria_table, "kinds": kinds_table}


def update_tables(text: str) -> str:
    """`text` with every generated table (between its `spa-docs` markers) rewritten.

    Raises:
        ConfigError: if a table's markers are missing.
    """
    for name, make in TABLES.items():
        pattern = re.compile(
            rf"(<!-- spa-docs:{name} -->\n).*?(<!-- /spa-docs:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise ConfigError(f"no <!-- spa-docs:{name} --> ... <!-- /spa-docs:{name} --> block")
        text = pattern.sub(lambda match, make=make: f"{match[1]}{make()}\n{match[2]}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated tables of the Markdown files named in `argv` in place."""
    for name in sys.argv[1:] if argv is None else argv:
        path = Path(name)
        atomic_write_text(path, update_tables(path.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
