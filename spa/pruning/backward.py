"""Statistics from a backward pass (Gradient, Taylor), over the whole model or block by block.

`backward_statistics` runs one backward pass over the whole model per batch, which keeps the
activations of every block until it reaches them (1.1B parameters, 2 x 128 tokens: 0.7 GiB).
`blockwise_taylor` bounds Taylor's memory by one transformer block (issue 22); each calibration
batch goes through:

1. a no-gradient pass that keeps the input of every block (`spa.pruning.calibration`) and the
   last block's output: one `(N, T, hidden)` tensor per block;
2. the tail: the model runs again with every block standing in for itself by returning its
   recorded output (the last one a leaf that requires a gradient), so the loss gives
   `dL/d(last block output)` and the gradients of scored layers after the blocks (an LM head);
3. the blocks, last to first: block `i` runs with gradients on its recorded input and one
   backward from `dL/d(its output)` gives `dL/d(its input)` and every scored layer's `dL/da`
   inside it; its graph is freed before block `i - 1` runs;
4. the head: the model runs up to the first block with gradients, and a backward from
   `dL/d(first block input)` reaches scored layers before the blocks (embeddings).

By the chain rule these are the whole model's gradients (equal to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from spa._batch import call_model
from spa.errors import ConfigError
from spa.pruning._layers import (
    batches,
    channels_per_sample,
    default_loss,
    effective_bias,
    effective_weight,
    model_output,
    run_layer,
)
from spa.pruning.calibration import (
    BlockCall,
    _Captured,
    capture_inputs,
    hidden_states,
    inside,
)

Statistics = dict[str, torch.Tensor]


def taylor_value(output: torch.Tensor, grad: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Per output channel, `sum over samples of |mean over positions (a * dL/da)|`."""
    product = channels_per_sample(output.detach() * grad, layer)
    return product.mean(dim=2).abs().sum(dim=0).detach()


class _Outputs:
    """Forward hooks that make each watched layer's output differentiable and keep it."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.layers = layers
        self.found: dict[str, torch.Tensor] = {}
        self.handles = [layer.register_forward_hook(self._hook(n)) for n, layer in layers.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            if not output.requires_grad:  # nothing before it trains: a leaf of the graph
                output.requires_grad_(True)
            self.found[name] = output
            return output.clone()  # protect the kept output from in-place ops later on

        return hook

    def release(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()

    def backward(self, totals: Statistics, roots, grad_roots, extra=()) -> tuple:
        """Differentiate `roots` (weighted by `grad_roots`) wrt the kept outputs and `extra`,
        add each layer's Taylor value to `totals` and return the gradients of `extra`."""
        self.release()
        names = list(self.found)
        wanted = [*extra, *(self.found[n] for n in names)]
        if not wanted:
            return ()
        grads = torch.autograd.grad(roots, wanted, grad_roots, allow_unused=True)
        for name, grad in zip(names, grads[len(extra) :]):
            if grad is not None:
                value = taylor_value(self.found[name], grad, self.layers[name])
                totals[name] = totals.get(name, 0) + value
        self.found.clear()
        return grads[: len(extra)]


def backward_statistics(
    model, layers, data, loss_fn, num_batches, kind: str, output_fn=None
) -> Statistics:
    """Run batches and accumulate per-channel statistics from gradients.

    "gradient" recomputes each producer from a leaf copy of its adapted weight (it needs
    dL/dW_t). "taylor" needs only dL/da of each producer's output `a`: the output the model
    computed is made part of the graph and differentiated, so no weight is copied and no layer
    runs twice (issue 22).
    """
    if data is None:
        raise ConfigError(f"criterion {kind!r} needs data: pass data=[(inputs, targets), ...]")
    loss_fn = loss_fn or default_loss
    output_fn = output_fn or model_output
    totals: Statistics = {}
    samples = 0
    for inputs, targets in batches(data, num_batches):
        leaves: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def make_hook(name, leaves=leaves, outputs=outputs):
            def hook(module, args, output):
                if kind == "gradient":
                    leaves[name] = effective_weight(module).clone().requires_grad_(True)
                    output = run_layer(module, args[0], leaves[name], effective_bias(module))
                elif not output.requires_grad:  # nothing before it trains: a leaf of the graph
                    output.requires_grad_(True)
                outputs[name] = output
                return output.clone()  # protect `outputs` from in-place ops later on

            return hook

        handles = [layer.register_forward_hook(make_hook(n)) for n, layer in layers.items()]
        try:
            with torch.enable_grad():
                loss = loss_fn(output_fn(call_model(model, inputs)), targets)
                names = list(outputs)
                wrt = (
                    [leaves[n] for n in names]
                    if kind == "gradient"
                    else [outputs[n] for n in names]
                )
                grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        for name, grad in zip(names, grads):
            if grad is None:
                continue
            if kind == "gradient":
                value = grad.abs().flatten(1).sum(dim=1)  # |dL/dW| per output channel
            else:
                value = taylor_value(outputs[name], grad, layers[name])
            totals[name] = totals.get(name, 0) + value.detach()
        samples += len(targets) if kind == "taylor" and targets is not None else 1
    return averaged(totals, samples, kind)


def averaged(totals: Statistics, samples: int, kind: str) -> Statistics:
    """Divide the summed statistics by the samples, refusing a loss no scored layer reaches."""
    if not totals and samples:
        raise ConfigError(
            f"criterion {kind!r}: the loss does not depend on any scored layer; check loss_fn "
            "and output_fn"
        )
    return {name: value / max(samples, 1) for name, value in totals.items()}


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _with_hidden(call: BlockCall, hidden: torch.Tensor) -> BlockCall:
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _record(blocks: Sequence[nn.Module], call: BlockCall) -> tuple[list[BlockCall], list]:
    """The input call of every block and the last block's output, without gradients."""
    calls, structure = [call], []
    with torch.no_grad():
        for block in blocks:
            args, kwargs = calls[-1]
            output = block(*args, **kwargs)
            structure.append(output)
            calls.append(_with_hidden(calls[-1], _hidden(output)))
    return calls, structure


def _like(output, hidden: torch.Tensor):
    """`hidden` in the structure a block returned (a tensor, or a tuple led by it)."""
    if isinstance(output, tuple | list):
        return (hidden, *output[1:])
    return hidden


def _tail(model, blocks, calls, structure, outside, inputs, targets, loss_fn, output_fn, totals):
    """Run the model with recorded block outputs; return `dL/d(last block output)`."""
    last = hidden_states(calls[-1]).detach().requires_grad_(True)
    for index, block in enumerate(blocks):
        value = last if index == len(blocks) - 1 else hidden_states(calls[index + 1])
        block.forward = lambda *a, _o=structure[index], _v=value, **k: _like(_o, _v)
    watched = _Outputs(outside)
    try:
        with torch.enable_grad():
            loss = loss_fn(output_fn(call_model(model, inputs)), targets)
            (grad,) = watched.backward(totals, loss, None, extra=[last])
    finally:
        watched.release()
        for block in blocks:
            del block.forward
    return torch.zeros_like(last) if grad is None else grad


def _block(block, call, layers, grad_out, totals) -> torch.Tensor:
    """Backward through one block from `grad_out`; return `dL/d(its input)`."""
    x = hidden_states(call).detach().requires_grad_(True)
    args, kwargs = _with_hidden(call, x)
    watched = _Outputs(layers)
    try:
        with torch.enable_grad():
            out = _hidden(block(*args, **kwargs))
            (grad,) = watched.backward(totals, out, grad_out, extra=[x])
    finally:
        watched.release()
    return torch.zeros_like(x) if grad is None else grad


def _head(model, first_block, outside, inputs, grad_in, totals) -> None:
    """Backward from `dL/d(first block input)` through the modules before the blocks."""

    def stop(module, args, kwargs):
        raise _Captured(args, kwargs)

    watched = _Outputs(outside)
    handle = first_block.register_forward_pre_hook(stop, with_kwargs=True)
    hidden = None
    try:
        with torch.enable_grad():
            try:
                call_model(model, inputs)
            except _Captured as captured:
                hidden = hidden_states(captured.call)
        if hidden is not None and hidden.requires_grad:  # else nothing before reaches the loss
            watched.backward(totals, hidden, grad_in)
    finally:
        handle.remove()
        watched.release()


def blockwise_taylor(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    blocks: Sequence[str],
    data: Iterable,
    loss_fn: Callable | None = None,
    num_batches: int | None = None,
    output_fn: Callable | None = None,
) -> tuple[Statistics, int]:
    """Raw Taylor statistics of `layers`, computed one block's graph at a time.

    Equal to the whole-model computation in `spa.pruning.criteria` (the same chain rule); the
    model is run in place and restored (no weight is copied).

    Args:
        model: the adapted model, in eval mode.
        layers: producer layers by path (inside the blocks or not).
        blocks: `spa.pruning.calibration.sequential_blocks(model)`.
        data: `(inputs, targets)` batches, as for `spa.pruning.score`.
        loss_fn: as for the "taylor" criterion (default cross-entropy over the last axis).
        num_batches: batches to use (None = all).
        output_fn: maps the model's output to the prediction (default `model_output`).

    Returns:
        Per layer path, one value per output channel summed over samples (not yet averaged),
        and the number of samples.
    """
    loss_fn, output_fn = loss_fn or default_loss, output_fn or model_output
    modules = [model.get_submodule(path) for path in blocks]
    per_block = [{} for _ in modules]
    outside = {}
    for name, layer in layers.items():
        index = inside(name, blocks)
        (outside if index is None else per_block[index])[name] = layer
    totals: Statistics = {}
    samples = 0
    for inputs, targets in batches(data, num_batches):
        (call,) = capture_inputs(model, modules[0], [(inputs, targets)])
        calls, structure = _record(modules, call)
        grad = _tail(
            model, modules, calls, structure, outside, inputs, targets, loss_fn, output_fn, totals
        )
        del structure
        for index in reversed(range(len(modules))):
            grad = _block(modules[index], calls.pop(index), per_block[index], grad, totals)
        if outside:
            _head(model, modules[0], outside, inputs, grad, totals)
        samples += len(targets) if targets is not None else 1
    return totals, samples
