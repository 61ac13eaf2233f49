"""The metadata document of a bundle, from facts other modules computed about the task.

Accounting (`spa.accounting`), density (`spa.adapters.density`) and fingerprints
(`spa.tasks.fingerprint`) are computed by their own modules and handed in as `TaskFacts`; this
module only arranges them with the layer and module entries into the document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from spa._version import __version__
from spa.accounting import LearnedParameters
from spa.adapters.inject import adapt_report
from spa.codec.protocols import Entry
from spa.codec.writer import BundleWriter
from spa.tasks.codecs import codec_sections
from spa.tasks.format import FORMAT_NAME, FORMAT_VERSION, MASKS_TENSOR, pack_masks
from spa.tasks.save_layers import NormStatistics
from spa.tasks.schema import needed_modules, trained_groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFacts:
    """What other modules computed about a task model and its base, for the metadata.

    Attributes:
        architecture: `describe_architecture(base)`.
        base_fingerprint: `fingerprint(base)` (its weights).
        base_structure: `structure_fingerprint(base)` (its module tree and shapes).
        density: `layers_density` of the adapter layers.
        learned: `learned_parameters(model)` (dParams, DESIGN §2).
    """

    architecture: str
    base_fingerprint: str
    base_structure: str
    density: float
    learned: LearnedParameters


@dataclasses.dataclass(frozen=True, kw_only=True)
class BundleOptions:
    """The caller's options a bundle records (see `spa.save_task`)."""

    dtype: torch.dtype
    norm_statistics: NormStatistics
    model_name: str | None
    model_options: dict[str, Any] | None


def adapter_description(model: nn.Module) -> Entry | None:
    """The adapter config and task head `spa.adapt` recorded on `model` (None if not adapted)."""
    report = adapt_report(model)
    if report is None:
        return None
    config = dataclasses.asdict(report.config)
    return {"type": type(report.config).__name__, "config": config, "head": list(report.head)}


def unchanged_needed(
    base_model: nn.Module, adapter: Entry | None, layers: list[Entry], modules: list[Entry]
) -> list[Entry]:
    """Entries of trained modules that did not change (recorded, so dropping one is detected)."""
    groups, head = trained_groups({"adapter": adapter})
    recorded = {entry["path"] for entry in layers + modules}
    paths = [entry["path"] for entry in layers]
    needed = needed_modules(base_model, groups, head, paths)
    return [{"path": name} for name in needed if name not in recorded]


def pack_writer_masks(writer: BundleWriter) -> list[list[Any]]:
    """Bit-pack the writer's masks into its tensors; return the masks' layout."""
    packed, layout = pack_masks(writer.masks)
    if packed is not None:
        writer.tensors[MASKS_TENSOR] = packed
    return layout


def bundle_metadata(
    options: BundleOptions,
    facts: TaskFacts,
    adapter: Entry | None,
    writer: BundleWriter,
    entries: tuple[list[Entry], list[Entry]],
) -> dict[str, Any]:
    """The bundle's metadata document; `entries` are the layer and the module entries."""
    layers, modules = entries
    sections = {name: writer.sections.get(name, []) for name in codec_sections()}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spa_version": __version__,
        "architecture": facts.architecture,
        "model_name": options.model_name,
        "model_options": options.model_options,
        "base_fingerprint": facts.base_fingerprint,
        "base_structure": facts.base_structure,
        "adapter": adapter,
        "dtype": str(options.dtype).removeprefix("torch."),
        "norm_statistics": options.norm_statistics,
        "density": facts.density,
        "dparams": facts.learned.total,
        "dparams_by_kind": dict(facts.learned.by_kind),
        "layers": layers,
        "modules": modules,
        **sections,
        "masks": pack_writer_masks(writer),
    }
