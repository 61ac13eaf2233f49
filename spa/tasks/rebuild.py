"""Rebuild a fused, compacted `transformers` model from its exported config, as a load would.

`save_pretrained` checks the exported config by building a fresh model of the same class from
it, holding the model's own tensors (no copy, no random initialisation), with the buffers that
are not saved set to what `transformers` computes when it loads the directory.
"""

from __future__ import annotations

import torch
from torch import nn

from spa.adapters.transposed import is_transposed_linear, weight_in_layout
from spa.errors import ConfigError
from spa.tasks.stacked_experts import stack_experts


def rebuild(plain: nn.Module, config) -> tuple[nn.Module, list[str]]:
    """A fresh model of `plain`'s class built from `config`, holding `plain`'s weights.

    It is built on the meta device (no random initialisation of weights that are replaced at
    once) and takes `plain`'s tensors. Buffers outside the state dict (rotary frequencies) are
    initialised as `from_pretrained` initialises them (`_loaded_buffers`); where `plain`'s own
    buffer is that value rounded to a lower precision, the rebuilt model keeps `transformers`'
    value (its name is returned), else it takes `plain`'s. A buffer without a counterpart of the
    same shape in `plain` makes the model be built for real instead.

    Returns:
        The rebuilt model and the names of the buffers that hold `transformers`' values.
    """
    with torch.device("meta"):
        rebuilt = type(plain)(config)
    loaded = _loaded_buffers(rebuilt)
    modules = dict(plain.named_modules())
    wanted = rebuilt.state_dict()
    state = stack_experts(plain, plain.state_dict(), wanted)
    for name, module in rebuilt.named_modules():
        key = f"{name}.weight" if name else "weight"
        if is_transposed_linear(module) and isinstance(modules.get(name), nn.Linear):
            state[key] = weight_in_layout(module, state[key])
    config_class = type(config).__name__
    for key, tensor in wanted.items():
        if key not in state:
            raise ConfigError(
                f"save_pretrained: {key} is missing from the model; a {type(plain).__name__} "
                f"built from transformers' {config_class} needs it"
            )
        if state[key].shape != tensor.shape:
            raise ConfigError(
                f"save_pretrained: {key} has shape {tuple(state[key].shape)}, a "
                f"{type(plain).__name__} built from the exported {config_class} has "
                f"{tuple(tensor.shape)}; the config cannot describe this model (where "
                "transformers derives the head size as hidden / heads, prune heads and the "
                "hidden size together: ranking='local', round_to=spa.pretrained_round_to(model))"
            )
    extra = sorted(set(state) - set(wanted))
    if extra:
        raise ConfigError(
            f"save_pretrained: {extra[0]} has no place in a {type(plain).__name__} built from "
            f"transformers' {config_class}"
        )
    rebuilt.load_state_dict(state, strict=True, assign=True)
    recomputed = _take_buffers(rebuilt, plain, loaded)
    if recomputed is None:
        parameter = next(plain.parameters())
        rebuilt = type(plain)(config).to(device=parameter.device, dtype=parameter.dtype)
        rebuilt.load_state_dict(state, strict=True)
        recomputed = []
    if getattr(config, "tie_word_embeddings", False):
        rebuilt.tie_weights()  # assigned tensors are separate parameters: share them again
    return rebuilt.eval(), recomputed


def _loaded_buffers(rebuilt: nn.Module) -> dict[str, torch.Tensor]:
    """The values `from_pretrained` gives `rebuilt`'s floating-point meta buffers: allocated,
    then set by the model's own `_init_weights` (which leaves the meta parameters as they are).
    A buffer `_init_weights` does not set (still NaN) is left out."""
    initialise = getattr(rebuilt, "_init_weights", None)
    owners: dict[str, nn.Module] = {}
    for name, buffer in list(rebuilt.named_buffers()):
        if buffer.is_meta and buffer.is_floating_point() and initialise is not None:
            owner, _, key = name.rpartition(".")
            module = rebuilt.get_submodule(owner)
            module._buffers[key] = torch.full_like(buffer, float("nan"), device="cpu")
            owners[owner] = module
    with torch.no_grad():
        for module in owners.values():
            initialise(module)
    found = {}
    for name, buffer in list(rebuilt.named_buffers()):
        owner, _, key = name.rpartition(".")
        if owner in owners and buffer.is_floating_point() and not buffer.is_meta:
            if bool(buffer.isnan().any()):
                owners[owner]._buffers[key] = buffer.to("meta")  # taken from the model instead
            else:
                found[name] = buffer
    return found


def _take_buffers(
    rebuilt: nn.Module, plain: nn.Module, loaded: dict[str, torch.Tensor]
) -> list[str] | None:
    """Set `rebuilt`'s buffers that are not in the state dict: `transformers`' loaded value where
    `plain`'s is that value rounded, else `plain`'s buffer of the same name and shape.

    Returns:
        The names given `transformers`' value, or None if a buffer has no counterpart.
    """
    found = dict(plain.named_buffers())
    recomputed = []
    for name, buffer in list(rebuilt.named_buffers()):
        source = found.get(name)
        value = loaded.get(name)
        if buffer.is_meta or value is not None:
            if source is None or source.shape != buffer.shape:
                return None
            owner, _, key = name.rpartition(".")
            if value is not None and _rounded(source, value):
                recomputed.append(name)
            else:
                _check_recomputed(name, source, value)
                rebuilt.get_submodule(owner)._buffers[key] = source.clone()
    if any(t.is_meta for t in [*rebuilt.parameters(), *rebuilt.buffers()]):
        return None
    return recomputed


def _check_recomputed(name: str, source: torch.Tensor, value: torch.Tensor | None) -> None:
    """Refuse a buffer that `transformers` recomputes from the exported config to another value
    than the model's (Gemma's `embed_scale`, sqrt of the hidden size, after hidden pruning)."""
    if value is None or source.shape != value.shape:
        return
    reference = source.to(device=value.device, dtype=value.dtype)
    if torch.allclose(reference, value, rtol=1e-6, atol=0.0):
        return
    shown = (
        f"{value.item():.6g} (the model has {reference.item():.6g})"
        if value.numel() == 1
        else f"values up to {float((value - reference).abs().max()):.3g} away from the model's"
    )
    raise ConfigError(
        f"save_pretrained: transformers computes the buffer {name} from the exported config as "
        f"{shown}: it follows a pruned size, so the config cannot describe this model; prune "
        "without that unit (e.g. keep the hidden size) or save a task bundle (spa.save_task)"
    )


def _rounded(source: torch.Tensor, value: torch.Tensor) -> bool:
    """True if `source` is `value` cast to a lower floating-point precision."""
    if not (source.is_floating_point() and value.is_floating_point()):
        return False
    if torch.finfo(source.dtype).bits >= torch.finfo(value.dtype).bits:
        return False
    return torch.equal(value.to(source.dtype), source.to(value.device))
