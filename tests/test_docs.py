"""The README's criteria and kinds tables are the ones generated from the registries."""

from __future__ import annotations

from pathlib import Path

import pytest

from spa import docs
from spa.errors import ConfigError
from spa.pruning.block_criteria import BLOCK_CRITERIA
from spa.pruning.criteria import CRITERIA

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_are_the_generated_ones() -> None:
    text = README.read_text(encoding="utf-8")
    assert docs.update_tables(text) == text, "run `python -m spa.docs README.md`"


def _cells(table: str, column: int) -> list[str]:
    return [line.split(" | ")[column].strip("| `") for line in table.splitlines()[2:]]


def test_criteria_table_lists_every_builtin_criterion_once() -> None:
    names = _cells(docs.criteria_table(), 0)
    assert sorted(names) == sorted(CRITERIA.names() + BLOCK_CRITERIA.names())


def test_a_new_builtin_entry_changes_the_table(monkeypatch) -> None:
    def extra(model, layers, data=None, loss_fn=None, **options):
        """A criterion added in this test."""

    extra.__module__ = "spa.pruning.extra"  # as if spa registered it
    before = README.read_text(encoding="utf-8")
    monkeypatch.setitem(CRITERIA._items, "extra", extra)
    assert "| `extra` | channels | A criterion added in this test. |" in docs.criteria_table()
    assert docs.update_tables(before) != before


def test_entries_registered_outside_spa_are_not_listed(monkeypatch) -> None:
    def outside(model, layers, data=None, loss_fn=None, **options):
        """Registered by a user."""

    monkeypatch.setitem(CRITERIA._items, "outside", outside)
    assert "outside" not in docs.criteria_table()


def test_missing_markers_are_named() -> None:
    with pytest.raises(ConfigError, match="spa-docs:criteria"):
        docs.update_tables("no tables here")


def test_kinds_table_lists_spas_kinds_and_presets_but_not_test_kinds() -> None:
    from spa.adapters import ADAPTER_KINDS
    from spa.experiments.presets import ADAPTER_PRESETS

    ours = [
        n
        for n in ADAPTER_KINDS.names()
        if ADAPTER_KINDS.get(n).config_type.__module__[:4] == "spa."
    ]
    assert _cells(docs.kinds_table(), 0) == ours + ADAPTER_PRESETS.names()
