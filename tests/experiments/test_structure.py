"""Where the budget went: kept heads / FFN neurons / channels per group, read back independently
from the compacted model's shapes."""

from __future__ import annotations

import copy

import torch

import spa
from spa.experiments.measure import measure_task
from spa.experiments.structure import structure_table, write_structure
from spa.models import resnet18
from spa.pruning import apply_masks, channel_groups, compute_masks
from tests._transformers import llama


def _pruned(model, example, density, units=None):
    groups = channel_groups(model, example, units=units)
    torch.manual_seed(0)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, density))
    return groups


def test_cnn_structure_counts_the_compacted_channels():
    base = resnet18(num_classes=3, small_input=True, width=8).eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval()
    example = torch.randn(1, 3, 16, 16)
    groups = _pruned(model, example, 0.4)
    structure = measure_task(model, base, example, None, groups=groups)["structure"]
    compacted = spa.fuse(spa.compact(copy.deepcopy(model), example))
    for group in groups:
        kept, total = structure[group.root]
        assert total == base.get_submodule(group.root).weight.shape[0]
        assert kept == compacted.get_submodule(group.root).weight.shape[0], group.root
    assert any(kept < total for kept, total in structure.values())


def test_transformer_structure_counts_heads_and_ffn_neurons_per_block():
    base = llama().model.eval()  # the LlamaForCausalLM inside the test wrapper
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval()
    example = torch.randint(0, base.config.vocab_size, (1, 8))
    groups = _pruned(model, example, 0.5)
    structure = measure_task(model, base, example, None, groups=groups)["structure"]
    compacted = spa.compact(copy.deepcopy(model), example)
    original = base.model.layers[0]
    for index, block in enumerate(compacted.model.layers):
        kept, total = structure[f"model.layers.{index}.self_attn heads"]
        # Under GQA a group channel is a key/value head with its query heads.
        assert total == base.config.num_key_value_heads
        for name in ("q_proj", "k_proj", "v_proj"):
            rows = getattr(block.self_attn, name).base.weight.shape[0]
            assert rows * total == kept * getattr(original.self_attn, name).weight.shape[0]
        ffn = structure[f"model.layers.{index}.mlp ffn"]
        assert ffn == [block.mlp.up_proj.base.weight.shape[0], base.config.intermediate_size]
    assert any(kept < total for kept, total in structure.values())


def test_structure_table_and_plot_are_written(tmp_path):
    records = [
        {
            "_run": "r",
            "method": "SPLoRA r8",
            "step": step,
            "target_density": density,
            "structure": {"layers.0 heads": [kept, 4], "layers.0 ffn": [2 * kept, 8]},
        }
        for step, density, kept in ((0, 1.0, 4), (1, 0.5, 2))
    ]
    table = structure_table(records)
    assert "| layers.0 heads | 4/4 | 2/4 |" in table
    assert "| layers.0 ffn | 8/8 | 4/8 |" in table
    written = write_structure(records, tmp_path)
    assert all(path.stat().st_size > 0 for path in written) and len(written) == 2
    assert write_structure([{"step": 0}], tmp_path / "none") == []
