"""Which codec writes and reads a bundle layer entry: its adapter kind's own, else the generic.

Each adapter kind registers its codec with its `AdapterKind` (`codec=`, in the kind's own
package: `spa.adapters.splora.codec`, `spa.adapters.splopa.codec`); a kind without one uses
the generic codec of `spa.tasks.generic_layers`, so a new kind needs no code here. Bundle layer
entries record their kind (`entry["kind"]`, "splora" when absent in older bundles).
"""

from __future__ import annotations

from spa.adapters.registry import ADAPTER_KINDS
from spa.codec.protocols import Entry, LayerCodec
from spa.tasks.generic_layers import plan_generic, save_generic

# Entries written before kinds were recorded are SPLoRA / fine-pruning entries.
DEFAULT_KIND = "splora"
GENERIC_CODEC = LayerCodec(save=save_generic, plan=plan_generic)


def codec_for(kind: str) -> LayerCodec:
    """The codec of adapter kind `kind`: its registered one, else the generic codec."""
    codec = ADAPTER_KINDS.get(kind).codec if kind in ADAPTER_KINDS else None
    return GENERIC_CODEC if codec is None else codec


def codec_sections() -> list[str]:
    """The metadata sections of every registered codec (each bundle carries them all)."""
    sections = (ADAPTER_KINDS.get(name).codec for name in ADAPTER_KINDS)
    names = [s for codec in sections if codec is not None for s in codec.sections]
    return list(dict.fromkeys(names))


def entry_kind(entry: Entry) -> str:
    """The adapter kind a bundle layer entry records."""
    return entry.get("kind", DEFAULT_KIND)
