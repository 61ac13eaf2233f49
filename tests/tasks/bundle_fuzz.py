"""Run seeded bundle mutations and classify what loading makes of each (issue 13).

Used by `tests/tasks/test_fuzz.py` and `benchmarks/fuzz_bundles.py`: tiny task bundles covering
every entry kind, and a loop that mutates them and loads each result onto its base.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.deploy import compacted
from spa.errors import SpaError
from spa.tasks import build_task, fingerprint, plan_task
from spa.tasks.format import parse_bundle

from .bundle_mutations import MUTATIONS

OUTCOMES = ("refused", "loaded-identical", "silently-wrong", "crash")


def classify(
    base: nn.Module, base_fingerprint: str, data: bytes, example: torch.Tensor, expected: Any
) -> tuple[str, str]:
    """Load the (mutated) bundle bytes onto `base` and run it; return an outcome and a detail.

    "refused": a `SpaError` on load; "loaded-identical": outputs bit-identical to `expected`;
    "silently-wrong": it loads and runs but gives other outputs; "crash": a non-spa exception
    while loading, or any exception while running the loaded model.
    """
    try:
        bundle = parse_bundle(data, "fuzz.safetensors")
        plan = plan_task(base, bundle, base_fingerprint=base_fingerprint)
        model = build_task(base, plan)
    except SpaError as error:
        return "refused", str(error)
    except Exception as error:  # the fuzz's subject: any other exception is a finding
        return "crash", f"load: {type(error).__name__}: {error}"
    try:
        with torch.no_grad():
            got = model(example)
    except Exception as error:
        return "crash", f"forward: {type(error).__name__}: {error}"
    if expected is not None and got.shape == expected.shape and torch.equal(got, expected):
        return "loaded-identical", ""
    return "silently-wrong", "outputs differ from the original task"


def run(
    subjects: list[tuple[nn.Module, bytes, torch.Tensor]],
    count: int,
    seed: int,
    kinds: list[str] | None = None,
) -> tuple[dict[str, dict[str, int]], list[tuple[str, int, str, str]]]:
    """Apply `count` seeded mutations round-robin over `subjects` and mutation kinds.

    Returns:
        `{kind: {outcome: count}}` and the findings: (kind, subject, outcome, detail) of every
        silently wrong or crashing mutation.
    """
    rng = random.Random(seed)
    kinds = kinds or list(MUTATIONS)
    counts = {kind: dict.fromkeys(OUTCOMES, 0) for kind in kinds}
    prepared = []
    for base, data, example in subjects:
        base_fingerprint = fingerprint(base)
        outcome, detail = classify(base, base_fingerprint, data, example, None)
        assert outcome == "silently-wrong", f"the original bundle must load: {detail}"
        with torch.no_grad():
            expected = build_task(base, plan_task(base, parse_bundle(data, "original")))(example)
        prepared.append((base, base_fingerprint, data, example, expected))
    findings = []
    done = attempts = 0
    while done < count and attempts < count * 20:
        attempts += 1
        kind = kinds[attempts % len(kinds)]
        index = rng.randrange(len(subjects))
        base, base_fingerprint, data, example, expected = prepared[index]
        mutated = MUTATIONS[kind](rng, data, base)
        if mutated is None or mutated == data:
            continue
        outcome, detail = classify(base, base_fingerprint, mutated, example, expected)
        counts[kind][outcome] += 1
        if outcome in ("silently-wrong", "crash"):
            findings.append((kind, index, outcome, detail))
        done += 1
    return counts, findings


def _compact_mlp(model: nn.Module, kept: list[int]) -> None:
    positions = torch.tensor(kept)
    model.get_submodule("0").select_channels(out_positions=positions)
    model.get_submodule("2").select_channels(in_positions=positions)


def _hidden_pruned_decoder() -> tuple[nn.Module, nn.Module, torch.Tensor, dict]:
    """A tiny Llama-style decoder whose hidden size, heads and FFN neurons were pruned: its
    bundle holds RMSNorm slices and the token embedding as kept indices (narrowed)."""
    import spa
    from spa.pruning import apply_masks, channel_groups, compute_masks, score

    from .._transformers import llama

    base = llama().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up, std=0.1)
    groups = channel_groups(model, None, units=("heads", "ffn", "hidden"))
    masks = compute_masks(groups, score(model, "weight", groups), 0.5, ranking="local")
    apply_masks(model, masks)
    return base, model.eval(), torch.randint(1, 40, (2, 5)), {}


def subjects(work: Path) -> list[tuple[nn.Module, bytes, torch.Tensor]]:
    """Tiny task bundles covering every entry kind: SPLoRA with masks and exact norms,
    fine-pruning with folded norms, a compacted MLP with unsorted kept indices, shared-bank
    SPLoPA with block masks, a residual net compacted through its pruning groups, and a
    decoder with a pruned hidden size (narrowed embedding)."""
    import spa
    from spa.pruning import apply_masks, channel_groups, compute_masks
    from spa.tasks import save_task

    from ..conftest import ConvNet, ResidualNet, mlp
    from .helpers import trained_task

    torch.manual_seed(0)
    made = []
    conv_base = ConvNet().eval()
    x = torch.randn(2, 4, 6, 6)
    for config, norms in ((spa.SPLoRAConfig(rank=2), "exact"), (spa.FinePruningConfig(), "folded")):
        model = trained_task(conv_base, config, x)
        made.append((conv_base, model, x, {"keep_masks": True, "norm_statistics": norms}))
    mlp_base = mlp(in_features=12, hidden=16).eval()
    x = torch.randn(4, 12)
    model = spa.adapt(copy.deepcopy(mlp_base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up)
    _compact_mlp(model, [9, 0, 3, 12])
    made.append((mlp_base, model, x, {}))
    config = spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=3, prototype_rank=2)
    made.append((mlp_base, trained_task(mlp_base, config, x), x, {}))
    residual_base = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    model = spa.adapt(copy.deepcopy(residual_base), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, (x,))
    scores = {i: torch.rand(group.size) for i, group in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up)
    made.append((residual_base, compacted(model, (x,)), x, {}))
    made.append(_hidden_pruned_decoder())
    result = []
    for index, (base, model, example, options) in enumerate(made):
        path = work / f"subject{index}.safetensors"
        task = model if options.get("keep_masks") else compacted(model)
        save_task(task, path, base_model=base, **options)
        result.append((base, path.read_bytes(), example))
    return result
