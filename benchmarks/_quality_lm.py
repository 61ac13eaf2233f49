"""The tiny-Llama part of the quality benchmark: spa through `spa run` next to Torch-Pruning.

spa's rows run the configs of `spa demo lm` at one density (50% of heads + FFN neurons, Taylor),
with and without distillation. The Torch-Pruning row follows the same protocol by hand on the
same source model: fine-tune every weight for one epoch of `steps_per_density` batches, Taylor
importance from the same scoring batches, `MetaPruner` over heads (`num_heads`,
`prune_num_heads=True`, `head_pruning_ratio=0.5`, head dims kept) and FFN neurons
(`pruning_ratio=0.5`; embeddings and LM head ignored, so the hidden size stays, as in spa's
runs), then one more epoch of fine-tuning; perplexity on the same held-out blocks.

Torch-Pruning 1.6 never finishes building its groups on transformers 5's Llama (the loop in
`DependencyGraph.get_pruning_group`): the rotary embedding's `rotate_half` (two slices and a
`cat` on the last axis) is traced as a concatenation along the channel axis, so the index
mapping of the query/key projections' group goes round the cycle q -> rope -> add -> q with
indices shifted by the head width each time and never repeats. With whole heads pruned and head
dims kept, rope only mixes dimensions inside one head, so the graph is traced with
`apply_rotary_pos_emb` replaced by the identity (`_torch_pruning.rope_hidden`), the model
itself unchanged.
With grouped-query attention Torch-Pruning then prunes key/value heads only (the query heads and
`o_proj` stay; every query head of a pruned group reads the remaining key/value head), not the
query heads with them as spa does: its row keeps more parameters at the same ratio.
"""

from __future__ import annotations

import copy
import io
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch_pruning
from _torch_pruning import llama_heads, rope_hidden
from torch.nn import functional

from spa.experiments import demo_lm
from spa.experiments.lm_model import evaluate_perplexity, scoring_batches, train_lm_epoch
from spa.experiments.runner import run
from spa.experiments.train import make_loader

DENSITY = 0.5


def _cell(values, scale=1.0, digits=1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _epoch(model, blocks, settings, lr, seed, epoch) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loader = make_loader(blocks, settings.batch_size, shuffle=True, seed=seed, epoch=epoch)
    train_lm_epoch(model, loader, optimizer, max_batches=settings.steps_per_density)


def _pruned(model, settings, blocks, ratio: float):
    """The model with heads and FFN neurons pruned at `ratio` by Taylor importance, in place."""
    num_heads = llama_heads(model)
    model.zero_grad()
    for inputs, targets in scoring_batches(blocks, settings.batch_size, settings.scoring_batches):
        logits = model(**inputs).logits
        functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    example = torch.zeros(1, 8, dtype=torch.long)
    with rope_hidden():
        pruner = torch_pruning.pruner.MetaPruner(
            model,
            example_inputs=example,
            importance=torch_pruning.importance.TaylorImportance(),
            global_pruning=False,
            pruning_ratio=ratio,
            ignored_layers=[model.lm_head, model.model.embed_tokens],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            output_transform=lambda output: output.logits,
        )
    pruner.step()
    model.zero_grad()
    return model


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_pruning_row(settings, source: Path, seed: int, params: int | None = None) -> dict:
    """Torch-Pruning Taylor + fine-tuning of every weight on the demo's source model.

    At ratio `1 - DENSITY`, or with the ratio bisected to keep `params` parameters.
    """
    train, held_out = demo_lm._blocks(settings)
    torch.manual_seed(seed)
    model = demo_lm._source_model(settings)
    model.load_state_dict(torch.load(source, weights_only=True))
    lr = settings.fine_pruning_lr
    _epoch(model, train, settings, lr, seed, epoch=0)
    if params is None:
        model = _pruned(model, settings, train, 1 - DENSITY)
    else:
        low, high, best = 0.0, 0.95, None
        for _ in range(8):
            ratio = (low + high) / 2
            candidate = _pruned(copy.deepcopy(model), settings, train, ratio)
            kept = _parameters(candidate)
            if best is None or abs(kept - params) < abs(_parameters(best) - params):
                best = candidate
            low, high = (ratio, high) if kept > params else (low, ratio)
        model = best
    _epoch(model, train, settings, lr, seed, epoch=1)
    buffer = io.BytesIO()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    torch.save(state, buffer)
    return {
        "metric": evaluate_perplexity(model.eval(), held_out, 64),
        "params": _parameters(model),
        "bytes": len(buffer.getvalue()),
    }


def _row(name: str, rows: list[dict]) -> str:
    return (
        f"| {name} | {_cell([r['metric'] for r in rows], 1, 2)} "
        f"| {_cell([r['params'] for r in rows], 1e-3)} "
        f"| {_cell([r['bytes'] for r in rows], 1e-3)} |"
    )


def lm_table(quick: bool, seeds: int) -> str:
    """spa methods (through `spa run`) and Torch-Pruning on the tiny Llama of `spa demo lm`."""
    settings = replace(demo_lm.QUICK if quick else demo_lm.FULL, densities=(DENSITY,))
    lines = [
        f"| method (tiny Llama, {DENSITY:.0%} heads+FFN, {seeds} seeds) | perplexity "
        "| kept params (K) | stored per task (KB) |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        source, _, perplexity = demo_lm.train_source(settings, Path(folder) / "source")
        lines.insert(0, f"source model perplexity {perplexity:.2f}\n")
        kept = []
        for distil in (0.0, 0.5):
            configs = demo_lm.experiment_configs(replace(settings, distill=distil), source)
            for config in configs:
                config = replace(config, seeds=tuple(range(seeds)))
                records = run(config, Path(folder) / config.name).records
                last = [{**r, "bytes": r["bundle_bytes"]} for r in records if r["step"] == 1]
                kept += [r["params"] for r in last]
                lines.append(_row(config.name, last))
        goal = round(statistics.mean(kept))
        for name, params in (("", None), (", equal params", goal)):
            rows = [torch_pruning_row(settings, source, seed, params) for seed in range(seeds)]
            lines.append(_row(f"Torch-Pruning Taylor + fine-tuning{name}", rows))
    return "\n".join(lines)
