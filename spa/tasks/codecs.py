"""`LAYER_CODECS`: how each adapter kind's layers are written to and read from a bundle.

Bundle layer entries record their kind (`entry["kind"]`, "splora" when absent in older
bundles). A kind registered here has its own compact layout; any other registered adapter
kind uses the generic codec of `spa.tasks.generic_layers`, so a new kind needs no code here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from spa._registry import Registry
from spa.tasks.block_layers import plan_splopa, save_splopa
from spa.tasks.channel_layers import plan_splora, save_splora
from spa.tasks.format import Bundle
from spa.tasks.generic_layers import plan_generic, save_generic

# Entries written before kinds were recorded are SPLoRA / fine-pruning entries.
DEFAULT_KIND = "splora"


@dataclass(frozen=True)
class LayerCodec:
    """Save and plan functions of one adapter kind's bundle entries.

    Attributes:
        save: `(name, layer, base layer, writer) -> (entry, retained weights)`.
        plan: `(bundle, entry, base layer or None) -> plan` with a `build()` returning the fused
            `(weight, bias)`; validates everything and raises `BundleError`.
    """

    save: Callable[[str, nn.Module, nn.Module, Any], tuple[dict[str, Any], int]]
    plan: Callable[[Bundle, dict[str, Any], nn.Module | None], Any]


LAYER_CODECS: Registry[LayerCodec] = Registry("bundle layer codec")
_CHANNEL = LayerCodec(save=save_splora, plan=plan_splora)
LAYER_CODECS.register("splora")(_CHANNEL)
LAYER_CODECS.register("fine_pruning")(_CHANNEL)
LAYER_CODECS.register("splopa")(LayerCodec(save=save_splopa, plan=plan_splopa))
GENERIC_CODEC = LayerCodec(save=save_generic, plan=plan_generic)


def codec_for(kind: str) -> LayerCodec:
    """The codec of adapter kind `kind`: its registered one, else the generic codec."""
    return LAYER_CODECS.get(kind) if kind in LAYER_CODECS else GENERIC_CODEC


def entry_kind(entry: dict[str, Any]) -> str:
    """The adapter kind a bundle layer entry records."""
    return entry.get("kind", DEFAULT_KIND)
