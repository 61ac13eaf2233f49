"""Layer-wise relevance propagation (LRP) implemented in-project, as a modified gradient.

Relevance is carried backwards as a modified gradient `G`, with `R = a * G` at every tensor `a`
(Ancona et al., ICLR 2018). Every Linear / Conv / SPLoRA layer (its adapted, fused weight) is
given the chosen rule by a forward hook that returns the same values with a different backward:

- "epsilon": `R_j = sum_k a_j w_jk R_k / (z_k + eps * sign(z_k))` (eps = 0 is the basic z-rule);
- "zplus": `R_j = sum_k a_j w+_jk R_k / (sum_j a_j w+_jk + eps)` (for non-negative inputs).

Everything else uses its ordinary gradient, which *is* the LRP rule for the piecewise-linear
parts of a CNN: ReLU passes relevance on unchanged, a residual addition `z = a + b` splits it as
`a/z` and `b/z`, average pooling proportionally, max pooling winner-take-all, and BatchNorm in
eval mode (an affine map) proportionally with its shift absorbing relevance, as a bias does.
Relevance is therefore conserved, layer by layer, up to what biases, BatchNorm shifts and the
epsilon stabiliser absorb; for a bias-free ReLU network under the z-rule it equals
gradient x input. Other non-linearities (GELU, sigmoid) get plain gradient x input treatment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from spa._batch import call_model
from spa.adapters.protocols import ChannelMasked
from spa.errors import ConfigError
from spa.pruning._layers import effective_bias, effective_weight, model_output, run_layer

Rule = Literal["epsilon", "zplus"]
_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Relevance:
    """Relevance maps of one batch.

    Args:
        input: relevance of every input element, shaped like the input; for a tuple or dict of
            inputs the same structure, with None for integer inputs (token ids).
        layers: per layer path, the relevance of its output (shaped like the output).
        output: the relevance put on the output (the target logits), `(N,)`, or one per
            explained token for per-token outputs (targets of -100 are skipped).
    """

    input: Any
    layers: dict[str, torch.Tensor]
    output: torch.Tensor


def _stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / safe)


def _rule_output(layer: nn.Module, x: torch.Tensor, rule: Rule, epsilon: float) -> torch.Tensor:
    """Value of the layer's output, with the backward of the LRP rule."""
    weight, bias = effective_weight(layer), effective_bias(layer)
    z = run_layer(layer, x, weight, bias)
    if rule == "epsilon":
        # Gradient of the linear part, scaled by z / (z + eps sign z): R_k / (z_k + eps) per unit.
        path, ratio = run_layer(layer, x, weight, None), _ratio(z, _stabilise(z, epsilon))
    else:
        path = run_layer(layer, x, weight.clamp(min=0), None)
        ratio = _ratio(z, path.detach() + epsilon)
    scaled = path * ratio.detach()
    return scaled + (z - scaled).detach()


def _leaves(inputs: Any) -> Any:
    """The inputs with every floating-point tensor replaced by a fresh leaf requiring grad."""
    if isinstance(inputs, torch.Tensor):
        leaf = inputs.detach().clone()
        return leaf.requires_grad_(True) if leaf.is_floating_point() else leaf
    if isinstance(inputs, dict):
        return {key: _leaves(value) for key, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_leaves(value) for value in inputs)
    return inputs


def _flat(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs] if inputs.requires_grad else []
    values = inputs.values() if isinstance(inputs, dict) else inputs
    if isinstance(inputs, dict | tuple | list):
        return [leaf for value in values for leaf in _flat(value)]
    return []


def _relevance(inputs: Any, grads: dict[int, torch.Tensor | None]) -> Any:
    """`a * G` for every leaf of `inputs` (None for tensors without relevance)."""
    if isinstance(inputs, torch.Tensor):
        grad = grads.get(id(inputs))
        if not inputs.requires_grad:
            return None
        return torch.zeros_like(inputs) if grad is None else (inputs * grad).detach()
    if isinstance(inputs, dict):
        return {key: _relevance(value, grads) for key, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_relevance(value, grads) for value in inputs)
    return None


def _picked(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The explained logits: per sample, or per token for per-token outputs (-100 skipped)."""
    if targets is None:
        targets = logits.argmax(dim=-1)
    targets = targets.to(logits.device)
    if targets.dim() != logits.dim() - 1 or targets.shape != logits.shape[:-1]:
        raise ConfigError(
            f"lrp: targets of shape {tuple(targets.shape)} do not index outputs of shape "
            f"{tuple(logits.shape)} (expected {tuple(logits.shape[:-1])}); pass output_fn= to "
            "select the prediction"
        )
    valid = targets != -100
    picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked[valid]


def lrp(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor | None = None,
    rule: Rule = "epsilon",
    epsilon: float = 1e-6,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> Relevance:
    """Propagate the target logits' relevance back to every layer and the input.

    The model runs in eval mode (BatchNorm as an affine map) and is restored afterwards; no
    parameter gradient is written.

    Args:
        model: a classifier whose (`output_fn`-selected) output is `(N, classes)` logits, or
            `(N, T, classes)` per token.
        inputs: a batch: a tensor, or a tuple / dict of tensors (keyword inputs).
        targets: class per sample (or per token) whose logit is explained; -100 skips a token;
            None uses the predicted class.
        rule: "epsilon" or "zplus" for every Linear/Conv layer.
        epsilon: the stabiliser (0 gives the basic z-rule for "epsilon").
        output_fn: maps the model's output to the logits; default: the tensor itself, a
            `ModelOutput`'s / dict's `logits`, or a tuple's first element.

    Returns:
        The input relevance, each layer's output relevance and the start relevance.

    Raises:
        ConfigError: for an unknown rule, a negative epsilon, or targets that do not fit the
            logits.
    """
    if rule not in ("epsilon", "zplus"):
        raise ConfigError(f"lrp: rule must be 'epsilon' or 'zplus', got {rule!r}")
    if epsilon < 0:
        raise ConfigError(f"lrp: epsilon must be >= 0, got {epsilon!r}")
    layers = _rule_layers(model)
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        layer.register_forward_hook(_hook(name, outputs, rule, epsilon))
        for name, layer in layers.items()
    ]
    handles += [
        module.register_forward_hook(_differentiable)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
    ]
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = _leaves(inputs)
            leaves = _flat(x)
            picked = _picked((output_fn or model_output)(call_model(model, x)), targets)
            calls = [(n, out) for n, outs in outputs.items() for out in outs if out.requires_grad]
            grads = torch.autograd.grad(
                picked.sum(), leaves + [out for _, out in calls], allow_unused=True
            )
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    layer_relevance = _layer_relevance(outputs, calls, grads[len(leaves) :])
    input_relevance = _relevance(x, {id(leaf): g for leaf, g in zip(leaves, grads)})
    return Relevance(input=input_relevance, layers=layer_relevance, output=picked.detach())


def _differentiable(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Token ids are not differentiable: a frozen embedding's output stands in as a leaf, so
    relevance reaches the first layers even where nothing before them is trained (OLMo's
    norms have no weight)."""
    return output if output.requires_grad else output.detach().requires_grad_(True)


def _rule_layers(model: nn.Module) -> dict[str, nn.Module]:
    layers = {}
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, ChannelMasked):
            inside.update(id(m) for m in module.modules())
            layers[name] = module
        elif isinstance(module, _PLAIN):
            layers[name] = module
    return layers


def _layer_relevance(outputs: dict, calls: list, grads) -> dict[str, torch.Tensor]:
    """Per layer, `a * G` of its output, summed over the calls shaped like its first one.

    A call on tensors that do not depend on the input (DeBERTa's projections of its relative
    position embeddings) receives no relevance, and is not differentiated (autograd refuses
    outputs that need no gradient). A layer called again on the input (DeBERTa shares its key
    projection between the tokens and the positions) adds the relevance of each such call.
    """
    relevance = {name: torch.zeros_like(outs[0]).detach() for name, outs in outputs.items()}
    for (name, out), grad in zip(calls, grads):
        if grad is not None and out.shape == relevance[name].shape:
            relevance[name] += (out * grad).detach()
    return relevance


def _hook(name: str, outputs: dict, rule: Rule, epsilon: float):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        out = _rule_output(module, args[0], rule, epsilon)
        outputs.setdefault(name, []).append(out)
        return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch `out`

    return hook
