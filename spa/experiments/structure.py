"""Where the budget went: what every channel group (or layer) kept, per density.

The runner records, with each density step, `structure`: per channel group the kept and total
group channels (attention heads, FFN neurons, the hidden size, conv channels; labelled by the
modules the group spans, e.g. `model.layers.0.self_attn heads`), or, for kinds without channel
groups (block pruning), per adapter layer the output rows and input columns left after
compaction. With grouped-query attention a "heads" channel is a key/value head together with
its query heads. `spa report` turns them into `structure.md` (one row per group, one column per
density) and `plots/structure.png` (kept fraction per group at each run's last density).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from spa.adapters.protocols import adapter_layers
from spa.experiments.files import atomic_write_bytes, atomic_write_text
from spa.pruning.channel_group import ChannelGroup

# One entry: [kept, total] for a group, or [rows kept, rows, columns kept, columns] for a layer.
Structure = dict[str, list[int]]


def _common_prefix(names: Sequence[str]) -> str:
    parts = [name.split(".") for name in names]
    prefix = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        prefix.append(pieces[0])
    return ".".join(prefix)


def group_label(group: ChannelGroup) -> str:
    """A group's label: the modules it spans and its unit ("model.layers.0.mlp ffn"), or the
    root layer's path for a traced group."""
    if group.unit is None:
        return group.root
    prefix = _common_prefix([member.name for member in group.members])
    return f"{prefix} {group.unit}".strip()


def group_structure(groups: Sequence[ChannelGroup]) -> Structure:
    """Per group label, `[kept, total]` group channels (heads, neurons, channels)."""
    return {group_label(group): [sum(group.kept), group.size] for group in groups}


def layer_structure(
    compacted: nn.Module, base: nn.Module, names: Sequence[str] | None = None
) -> Structure:
    """Per layer, `[rows kept, rows, columns kept, columns]` of the compacted model against the
    base layer of the same path (for block pruning: the rows and columns left non-empty).

    Args:
        compacted: the compacted model (adapted or fused).
        base: the plain base model.
        names: the layers to list; by default the compacted model's adapter layers.
    """
    if names is None:
        names = [name for name, _ in adapter_layers(compacted)]
    result = {}
    for name in names:
        layer = compacted.get_submodule(name)
        weight = getattr(layer, "base", layer).weight
        original = base.get_submodule(name).weight
        result[name] = [weight.shape[0], original.shape[0], weight.shape[1], original.shape[1]]
    return result


def structure_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per run and method, one row per group/layer, one column per density step
    (first seed), cells `kept/total`."""
    runs: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for record in records:
        if "structure" not in record:
            continue
        key = (record.get("_run", ""), record.get("method", ""))
        steps = runs.setdefault(key, {})
        steps.setdefault(record["step"], record)  # the first seed's record of each step
    sections = []
    for (run, method), steps in runs.items():
        ordered = [steps[index] for index in sorted(steps)]
        header = ["group / layer"] + [f"{r['target_density']:.0%}" for r in ordered]
        lines = [f"### {run} ({method})", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for label in ordered[0]["structure"]:
            cells = [_cell(r["structure"].get(label)) for r in ordered]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n" if sections else ""


def _cell(entry: list[int] | None) -> str:
    if entry is None:
        return "-"
    if len(entry) == 2:
        return f"{entry[0]}/{entry[1]}"
    return f"{entry[0]}/{entry[1]} x {entry[2]}/{entry[3]}"


def _fraction(entry: list[int]) -> float:
    if len(entry) == 2:
        return entry[0] / entry[1] if entry[1] else 1.0
    return (entry[0] * entry[2]) / (entry[1] * entry[3]) if entry[1] * entry[3] else 1.0


def write_structure(records: Sequence[dict[str, Any]], output_dir: str | Path) -> list[Path]:
    """Write `structure.md` and `plots/structure.png` if any record has a structure.

    Returns:
        The written files (empty when no record has one).
    """
    text = structure_table(records)
    if not text:
        return []
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / "structure.md", text)
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if "structure" in record:
            key = (record.get("_run", ""), record.get("method", ""))
            if key not in last or record["step"] > last[key]["step"]:
                last[key] = record
    from spa.experiments.plots import _pyplot

    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7.2, 4.8))
    for (run, method), record in last.items():
        labels = list(record["structure"])
        values = [_fraction(record["structure"][label]) for label in labels]
        axes.plot(
            range(len(labels)),
            values,
            marker="o",
            label=f"{run} ({method}) at {record['target_density']:.0%}",
        )
    axes.set_title("Where the budget went: kept fraction per group / layer", fontsize=12)
    axes.set_xlabel("group or layer, input to output", fontsize=10)
    axes.set_ylabel("kept fraction", fontsize=10)
    axes.set_ylim(0, 1.05)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    pyplot.close(figure)
    atomic_write_bytes(output_dir / "plots" / "structure.png", buffer.getvalue())
    return [output_dir / "structure.md", output_dir / "plots" / "structure.png"]
