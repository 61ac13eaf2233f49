"""Block fine-pruning of `nn.Linear` layers, and discovery of every block-prunable layer."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.config import ModuleSelection
from spa.adapters.inject import _set_module, find_head, matches
from spa.adapters.masks import expand_block_mask
from spa.adapters.splopa import GateHook, SPLoPALinear, check_block_shape
from spa.errors import NoTargetsError, UnsupportedLayerError


class BlockMaskedLinear(nn.Module):
    """Fine-pruning baseline for blocks: an `nn.Linear` trained directly under a block mask::

        W_t = W * (M_b kron J)

    Symbols map to attributes: `W` -> `base.weight` (n x m, trainable), `M_b` -> `block_mask`
    (n/p x m/q, bool). The bias is the base's, unmasked (as in `SPLoPALinear`), so block
    pruning, compaction and accounting treat SPLoPA and fine-pruning through one code path.
    Learned parameters: `p * q * ||M_b||_0` (plus the bias when it trains).

    Args:
        base: the `nn.Linear` to prune; its shape must be divisible by the block shape.
        block_shape: `(p, q)`.
        name: dotted layer path, used in error messages.

    Raises:
        UnsupportedLayerError: for a non-Linear base or a shape not divisible by the block shape.
    """

    def __init__(
        self, base: nn.Module, block_shape: tuple[int, int] = (32, 32), name: str = "layer"
    ) -> None:
        super().__init__()
        if type(base) is not nn.Linear:
            raise UnsupportedLayerError(
                f"{name}: block fine-pruning supports nn.Linear only, got {type(base).__name__}"
            )
        check_block_shape(base, block_shape, name)
        rows, cols = block_shape
        out_features, in_features = base.weight.shape
        self.base = base
        self.name = name
        self.block_shape = (rows, cols)
        grid = (out_features // rows, in_features // cols)
        self.register_buffer(
            "block_mask", torch.ones(grid, dtype=torch.bool, device=base.weight.device)
        )
        # Training-time hook set by a block pruning criterion; see `SPLoPALinear.block_gate`.
        self.block_gate: GateHook | None = None

    def adapter_parameter_names(self) -> list[str]:
        """Fine-pruning has no adapter parameters; the base weight itself trains."""
        return []

    def masks(self) -> dict[str, torch.Tensor]:
        """The layer's pruning masks by name."""
        return {"block_mask": self.block_mask}

    def weight_mask(self) -> torch.Tensor:
        """`M_b kron J`, the element mask over `base.weight`."""
        return expand_block_mask(self.block_mask, self.block_shape)

    def masked_base_weight(self) -> torch.Tensor:
        """`W * (M_b kron J)`."""
        if bool(self.block_mask.all()):
            return self.base.weight
        return self.base.weight * self.weight_mask()

    def delta_weight(self) -> torch.Tensor:
        """Zero: fine-pruning learns the weight itself, not a delta."""
        return torch.zeros_like(self.base.weight)

    def fused_weight(self) -> torch.Tensor:
        """`W_t`, the masked weight."""
        return self.masked_base_weight()

    def __getattr__(self, name: str) -> object:
        # in_features / out_features come from `base` (issue 11).
        return _conv.base_attribute(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The masked linear map; a criterion's gate replaces the mask while training."""
        if self.block_gate is not None and torch.is_grad_enabled():
            weight, _ = self.block_gate(self)
        else:
            weight = self.masked_base_weight()
        return nn.functional.linear(x, weight, self.base.bias)

    def extra_repr(self) -> str:
        kept = int(self.block_mask.sum())
        return f"block_shape={self.block_shape}, blocks={kept}/{self.block_mask.numel()}"


BLOCK_LAYER_TYPES = (SPLoPALinear, BlockMaskedLinear)


def block_prunable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(dotted_name, layer)` for every SPLoPA or block fine-pruning layer of `model`.

    Args:
        model: a model adapted with `SPLoPAConfig` or wrapped by `wrap_block_fine_pruning`.

    Returns:
        An iterator in module order.
    """
    for name, module in model.named_modules():
        if isinstance(module, BLOCK_LAYER_TYPES):
            yield name, module


def wrap_block_fine_pruning(
    model: nn.Module,
    block_shape: tuple[int, int] = (32, 32),
    *,
    target_modules: ModuleSelection = None,
    exclude_modules: ModuleSelection = None,
    head_modules: ModuleSelection = None,
) -> nn.Module:
    """Wrap the selected `nn.Linear` layers in `BlockMaskedLinear`, in place, for fine-pruning.

    Nothing is frozen: fine-pruning trains every parameter. The task head (the selected
    `head_modules`, else the last `nn.Linear`) is never wrapped.

    Args:
        model: the model to prune.
        block_shape: `(p, q)` of every wrapped layer.
        target_modules: regex or name suffixes (see `spa.SPLoRAConfig`); None selects every
            `nn.Linear` except the head.
        exclude_modules: same forms; matching layers are left untouched.
        head_modules: the task head; None means the last `nn.Linear`.

    Returns:
        `model`, modified in place.

    Raises:
        UnsupportedLayerError: if an explicitly targeted layer's shape is not divisible by
            `block_shape`.
        NoTargetsError: if no layer was wrapped.
    """
    head = find_head(model, head_modules)
    explicit = target_modules is not None
    wrapped = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (explicit and not matches(name, target_modules)):
            continue
        if matches(name, exclude_modules) or any(
            name == h or name.startswith(h + ".") for h in head
        ):
            continue
        try:
            layer = BlockMaskedLinear(module, block_shape, name)
        except UnsupportedLayerError:
            if explicit:
                raise
            continue
        _set_module(model, name, layer)
        wrapped.append(name)
    if not wrapped:
        raise NoTargetsError(
            f"wrap_block_fine_pruning: no nn.Linear was wrapped (target_modules="
            f"{target_modules!r}, exclude_modules={exclude_modules!r}, block_shape={block_shape})"
        )
    return model
