"""`compact_blocks`: block-pruned models of every described family, trained or from a bundle."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa
from spa.adapters.protocols import adapter_layers
from spa.deploy import compact_blocks, without_empty_units
from spa.errors import UnsupportedLayerError
from spa.families import block_layouts, describe
from spa.models.tiny_lm import tiny_llama
from spa.pruning.block_criteria import create_block_criterion
from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
from tests._transformers import CASES, FFN, HEADS, HIDDEN, VOCAB, Case, Net

HEAD_DIM = HIDDEN // HEADS  # = block size: one block row per head


def _llama() -> nn.Module:
    model = tiny_llama(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=FFN,
        max_positions=32,
    )
    return Net(model, "decoder")


FAMILIES = [case for case in CASES if case.family != "llama"] + [Case("llama", _llama, True)]
KINDS = {
    "splopa": lambda: spa.SPLoPAConfig(block_shape=(HEAD_DIM, HEAD_DIM), num_prototypes=2),
    "block_fine_pruning": lambda: spa.BlockFinePruningConfig(block_shape=(HEAD_DIM, HEAD_DIM)),
}
TABLE = [
    pytest.param(case, kind, id=f"{case.family}-{kind}") for case in FAMILIES for kind in KINDS
]


def _kill(model: nn.Module, path: str, rows=None, columns=None) -> None:
    with torch.no_grad():
        mask = model.get_submodule(path).block_mask
        if rows is not None:
            mask[rows] = False
        if columns is not None:
            mask[:, columns] = False


def _block_pruned(case: Case, kind: str) -> tuple[nn.Module, nn.Module]:
    """Base and a block-pruned copy: trained-looking adapters, magnitude pruning to density 0.6,
    and, in the first block, the value rows of the first head and FFN neurons 0-15 emptied."""
    base = case.build().eval()
    model = spa.adapt(copy.deepcopy(base), KINDS[kind]())
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for parameter in layer.trainable_parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    schedule = GradualPruningConfig(final_density=0.6, warmup_steps=0, pruning_steps=1)
    pruner = GradualBlockPruner(model, create_block_criterion("magnitude"), schedule)
    pruner.step()
    pruner.finish()
    layout = block_layouts(model, describe(model))[0]
    heads = case.block_counts()[0][0]
    # Only the first head of the first block is emptied: the others keep every value row and
    # output column (random magnitude pruning could empty a head of a small stage by chance).
    with torch.no_grad():
        model.get_submodule(layout.output).block_mask[:, :heads] = True
        if layout.qkv is not None:
            model.get_submodule(layout.qkv).block_mask[2 * heads : 3 * heads] = True
        else:
            model.get_submodule(layout.value).block_mask[:heads] = True
    if layout.qkv is not None:
        _kill(model, layout.qkv, rows=2 * heads)  # value third, first head
    else:
        _kill(model, layout.value, rows=0)
    _kill(model, layout.ffn_inputs[0], rows=0)  # neurons 0-7: a zero input row
    _kill(model, layout.ffn_output, columns=1)  # neurons 8-15: a zero down column
    return base, model.eval()


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_shapes(compacted: nn.Module, report, case: Case) -> None:
    """The first block's projections lost exactly the reported heads and neurons."""
    layout = block_layouts(compacted, describe(compacted))[0]
    all_heads, width, ffn = case.block_counts()[0]
    heads = all_heads - len(report.removed_heads[layout.attention])
    assert compacted.get_submodule(layout.output).in_features == heads * (width // all_heads)
    neurons = ffn - report.removed_neurons[layout.ffn]
    assert compacted.get_submodule(layout.ffn_output).in_features == neurons
    assert all(compacted.get_submodule(p).out_features == neurons for p in layout.ffn_inputs)


@pytest.mark.parametrize("case,kind", TABLE)
def test_compact_blocks_of_the_trained_model_keeps_outputs_with_fewer_parameters(case, kind):
    _, model = _block_pruned(case, kind)
    x = case.inputs()
    with torch.no_grad():
        expected = model(x)
    fused_parameters = _parameters(spa.fuse(model))
    compacted, report = compact_blocks(model, x)
    assert spa.adapters.is_adapted(model)  # the input model is left as it was
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert report.parameters_before == fused_parameters
    assert report.parameters_after == _parameters(compacted) < fused_parameters
    assert report.flops_after < report.flops_before
    assert report.density == pytest.approx(spa.density(model))
    groups = 2 if case.family == "llama" else 1  # query heads per key/value head
    attention = block_layouts(model, describe(model))[0].attention
    assert report.removed_heads[attention][:groups] == list(range(groups))
    _check_shapes(compacted, report, case)


@pytest.mark.parametrize("case,kind", TABLE)
def test_compact_blocks_of_a_task_from_a_bundle_equals_the_trained_models(case, kind, tmp_path):
    base, model = _block_pruned(case, kind)
    x = case.inputs()
    with torch.no_grad():
        expected = model(x)
    _, trained_report = compact_blocks(model, x)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    compacted, report = compact_blocks(spa.load_task(base, path), x)
    host = spa.TaskHost(base, finalize=without_empty_units)
    host.add_task("task", path)
    served = host.model("task")
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(served(x), expected, rtol=1e-5, atol=1e-5)
    assert report.density is None  # a plain model: the bundle holds no masks any more
    assert report.removed_heads == trained_report.removed_heads
    assert report.removed_neurons == trained_report.removed_neurons
    assert report.parameters_after == trained_report.parameters_after == _parameters(served)
    assert report.parameters_after < report.parameters_before
    _check_shapes(served, report, case)


def _bert_qa() -> nn.Module:
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: one 32 x 32 block row per head
        intermediate_size=128,
        max_position_embeddings=32,
    )
    return transformers.BertForQuestionAnswering(config).eval()


def test_compact_blocks_by_hand_keeps_one_head_and_reports_the_dense_remainder():
    model = spa.adapt(_bert_qa(), spa.SPLoPAConfig(block_shape=(32, 32), num_prototypes=4))
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.block_weights.normal_()
    layer0, layer1 = "bert.encoder.layer.0", "bert.encoder.layer.1"
    _kill(model, f"{layer0}.attention.self.value", rows=0)  # head 0: zero value rows
    _kill(model, f"{layer0}.attention.output.dense", columns=1)  # head 1: zero output columns
    _kill(model, f"{layer0}.intermediate.dense", rows=1)  # neurons 32-63: zero input rows
    # Zero query and key rows leave a head (its scores still depend on the biases).
    _kill(model, f"{layer1}.attention.self.query", rows=[0, 1])
    _kill(model, f"{layer1}.attention.self.key", rows=[0, 1])
    _kill(model, f"{layer1}.output.dense", columns=0)  # neurons 0-31: zero down columns
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=ids)
    compacted, report = compact_blocks(model, {"input_ids": ids[:1]})
    with torch.no_grad():
        got = compacted(input_ids=ids)
    torch.testing.assert_close(got.start_logits, expected.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.end_logits, expected.end_logits, rtol=1e-5, atol=1e-5)
    # Both heads of layer 0 are empty; one (head 0, unchanged) stays so no projection is empty.
    assert report.removed_heads == {f"{layer0}.attention.self": [1]}
    assert report.removed_neurons == {f"{layer0}.intermediate": 32, f"{layer1}.intermediate": 32}
    assert compacted.bert.encoder.layer[0].attention.self.num_attention_heads == 1
    assert compacted.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    removed = 4 * 32 * 64 + 3 * 32 + 2 * 2 * 32 * 64 + 2 * 32  # Q, K, V, O of a head; neurons
    assert report.parameters_before - report.parameters_after == removed
    projections = 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert report.projection_parameters_before == projections
    assert report.projection_parameters_after == projections - (4 * 32 * 64 + 2 * 2 * 32 * 64)
    assert report.dense_fraction == pytest.approx(report.projection_parameters_after / projections)
    assert "removed 1 head(s), 64 FFN neuron(s)" in report.summary()


def test_compact_blocks_refuses_a_model_of_no_described_family():
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model = spa.adapt(mlp, spa.BlockFinePruningConfig(block_shape=(2, 2)))
    with pytest.raises(UnsupportedLayerError, match="Sequential: compact_blocks needs a model of"):
        compact_blocks(model, torch.randn(1, 8))
