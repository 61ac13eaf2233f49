"""The metadata document of a bundle, from the writer's records and facts computed elsewhere.

Accounting, density, fingerprints and the trained modules come from their own modules as
`spa.tasks.facts.TaskFacts`; this module arranges them with the caller's options, the layer and
module entries, the codecs' shared records and the bit-packed masks into the document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from spa._version import __version__
from spa.codec.protocols import STORAGE_DTYPES, Entry
from spa.codec.writer import BundleWriter
from spa.errors import ConfigError
from spa.tasks.bitmasks import pack_masks
from spa.tasks.codecs import codec_sections
from spa.tasks.facts import TaskFacts
from spa.tasks.format import FORMAT_NAME, FORMAT_VERSION, MASKS_TENSOR
from spa.tasks.save_layers import NormStatistics


@dataclasses.dataclass(frozen=True, kw_only=True)
class BundleOptions:
    """The caller's options a bundle records (see `spa.save_task`).

    Raises:
        ConfigError: for a dtype that is not a storage dtype or unknown norm statistics.
    """

    dtype: torch.dtype
    norm_statistics: NormStatistics
    model_name: str | None
    model_options: dict[str, Any] | None

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES.values():
            raise ConfigError(
                f"save_task: dtype must be one of {list(STORAGE_DTYPES)}, got {self.dtype}"
            )
        if self.norm_statistics not in ("folded", "exact"):
            raise ConfigError(
                "save_task: norm_statistics must be 'folded' or 'exact', got "
                f"{self.norm_statistics!r}"
            )


def _packed_masks(writer: BundleWriter) -> list[list[Any]]:
    """Bit-pack the writer's masks into its tensors; return the masks' layout."""
    packed, layout = pack_masks(writer.masks)
    if packed is not None:
        writer.tensors[MASKS_TENSOR] = packed
    return layout


def bundle_metadata(
    options: BundleOptions,
    facts: TaskFacts,
    writer: BundleWriter,
    entries: tuple[list[Entry], list[Entry]],
) -> dict[str, Any]:
    """The bundle's metadata document; `entries` are the layer and the module entries.

    Trained modules that did not change are recorded too (a path alone), so a bundle that drops
    one is refused instead of silently reusing the base's values.
    """
    layers, modules = entries
    recorded = {entry["path"] for entry in layers + modules}
    unchanged = [{"path": name} for name in facts.trained_modules if name not in recorded]
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
        "adapter": facts.adapter,
        "dtype": str(options.dtype).removeprefix("torch."),
        "norm_statistics": options.norm_statistics,
        "density": facts.density,
        "dparams": facts.learned.total,
        "dparams_by_kind": dict(facts.learned.by_kind),
        "layers": layers,
        "modules": modules + unchanged,
        **sections,
        "masks": _packed_masks(writer),
    }
