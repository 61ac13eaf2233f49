"""Row layouts: where each attention head and FFN neuron of a block lives in its projections.

The one place that knows how projections order their rows (issue 21). Units, attribute
synchronisation, empty-unit removal, bundle checks and export read heads and neurons from here:

- separate q/k/v: query head `h` is rows `h*d .. (h+1)*d` of the query projection, key/value
  head `j` the same rows of the key and value projections (`d` = head_dim, which need not be
  hidden size / heads);
- fused "blocked" `[all queries | all keys | all values]` (GPT-2 `c_attn`, Phi-3 `qkv_proj`,
  ModernBERT `Wqkv`): `heads*d` query rows, then `kv_heads*d` key and value rows;
- fused "grouped" (per key/value head `j`, `[its g query heads | key | value]`, `(g+2)*d` rows):
  GPT-NeoX's and BLOOM's per-head interleaving (g = 1) and Falcon's layouts (multi-query is one
  group of all heads);
- FFN inputs holding `chunks` equal parts side by side (`[gate | up]`: Phi-3 `gate_up_proj`,
  ModernBERT `Wi`): neuron `i` is row `k*n + i` of each part `k`.

Counts are computed from row numbers only (`rows(path)`), so the same arithmetic serves a live
model and a bundle's planned shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from spa.adapters.transposed import out_features
from spa.errors import ConfigError
from spa.families.layouts import BlockLayout

Rows = Callable[[str], int]


def module_rows(model: nn.Module) -> Rows:
    """`rows(path)`: output rows of the Linear (or Conv1D, or adapter layer's base) at `path`."""

    def rows(path: str) -> int:
        module = model.get_submodule(path)
        return out_features(getattr(module, "base", module))

    return rows


@dataclass(frozen=True)
class HeadRows:
    """One block's attention heads in the rows of its projections.

    Attributes:
        heads: query heads.
        kv_heads: key/value heads (each read by `groups` consecutive query heads).
        head_dim: rows per head.
        query, key, value: the projections holding query, key and value rows (the same path
            for a fused projection).
        output: the output projection (its input columns are the query heads in order).
        layout: "separate", "blocked" or "grouped".
    """

    heads: int
    kv_heads: int
    head_dim: int
    query: str
    key: str
    value: str
    output: str
    layout: str

    @property
    def groups(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def width(self) -> int:
        """Query rows (heads x head_dim): the output projection's input columns."""
        return self.heads * self.head_dim

    def query_rows(self, head: int) -> range:
        """Rows of query head `head` in `self.query`."""
        d = self.head_dim
        if self.layout == "grouped":
            j, r = divmod(head, self.groups)
            return _span(j * (self.groups + 2) * d + r * d, d)
        return _span(head * d, d)

    def key_rows(self, kv_head: int) -> range:
        """Rows of key head `kv_head` in `self.key`."""
        return self._kv_rows(kv_head, 0)

    def value_rows(self, kv_head: int) -> range:
        """Rows of value head `kv_head` in `self.value`."""
        return self._kv_rows(kv_head, 1)

    def output_columns(self, head: int) -> range:
        """Input columns of query head `head` in `self.output`."""
        return _span(head * self.head_dim, self.head_dim)

    def _kv_rows(self, kv_head: int, which: int) -> range:
        d = self.head_dim
        if self.layout == "separate":
            return _span(kv_head * d, d)
        if self.layout == "grouped":
            return _span((kv_head * (self.groups + 2) + self.groups + which) * d, d)
        return _span(self.width + (which * self.kv_heads + kv_head) * d, d)


def _span(start: int, length: int) -> range:
    return range(start, start + length)


def head_rows(layout: BlockLayout, rows: Rows) -> HeadRows:
    """Resolve where each head of one block lives, from its projections' row counts.

    Args:
        layout: the block (`spa.families.block_layouts`).
        rows: output rows of a projection path (`module_rows(model)`, or planned shapes).

    Returns:
        The block's head rows.

    Raises:
        ConfigError: if the rows are not a whole number of heads (naming the projection).
    """
    d = layout.head_dim
    if layout.qkv is None:
        query, key, value = rows(layout.query), rows(layout.key), rows(layout.value)
        heads, kv_heads = query // d, key // d
        if query % d or key % d or value != key or not kv_heads or heads % kv_heads:
            raise ConfigError(
                f"block {layout.path}: query rows {query}, key rows {key} and value rows "
                f"{value} are not whole heads of {d} with the same number of query heads per "
                "key/value head"
            )
        paths = (layout.query, layout.key, layout.value)
        return HeadRows(heads, kv_heads, d, *paths, layout.output, "separate")
    fused, groups = rows(layout.qkv), layout.kv_groups
    kv_heads, rest = divmod(fused, (groups + 2) * d)
    if rest or not kv_heads:
        raise ConfigError(
            f"{layout.qkv}: {fused} rows are not whole groups of {groups} query heads, one key "
            f"and one value head of {d} rows"
        )
    paths = (layout.qkv,) * 3
    return HeadRows(groups * kv_heads, kv_heads, d, *paths, layout.output, layout.qkv_layout)


def ffn_neurons(layout: BlockLayout, rows: Rows) -> int:
    """The block's FFN neurons, from its first input projection's rows.

    Raises:
        ConfigError: if the rows are not `chunks` equal parts.
    """
    total = rows(layout.ffn_inputs[0])
    if total % layout.ffn_chunks:
        raise ConfigError(
            f"{layout.ffn_inputs[0]}: {total} rows are not {layout.ffn_chunks} equal parts"
        )
    return total // layout.ffn_chunks


def neuron_rows(layout: BlockLayout, neurons: int) -> tuple[list[int], list[int]]:
    """Every row of an FFN input projection (ascending) and the neuron it belongs to: neuron
    `i` is row `k * neurons + i` of each of the `chunks` parts `k`."""
    parts = range(layout.ffn_chunks)
    rows = [part * neurons + i for part in parts for i in range(neurons)]
    return rows, [i for _ in parts for i in range(neurons)]
