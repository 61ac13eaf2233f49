"""The hidden size (residual stream) as a pruning unit, over every family that describes it:
adapt -> train -> score -> mask hidden channels (alone and with heads and FFN) -> masked ==
compacted == fused -> bundle -> load -> TaskHost; decoders generate the same tokens."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import spa
from spa.adapters.modules import is_norm
from spa.errors import ConfigError
from spa.families import describe
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, refresh_groups, score
from spa.pruning.criteria import CRITERIA
from spa.pruning.units import unit_groups
from tests._transformers import (
    CASES,
    HIDDEN,
    IMAGE,
    VOCAB,
    Case,
    adapted_after_step,
    assert_close_scaled,
    assert_same_generation,
    deit,
    tiny,
)

# Every described family (Swin with one stream per stage), and DeiT: the ViT family's modules
# with a distillation token beside the class token.
STREAM = [*CASES, Case("deit", deit, False, input_shape=(3, 8, 8))]
IDS = [case.family for case in STREAM]


def _inputs(case) -> torch.Tensor:
    """Token ids for text models (embeddings as inputs would fix the hidden size), else pixels."""
    if len(case.input_shape) == 2:  # (tokens, hidden): a text model
        return torch.randint(1, VOCAB, (2, case.input_shape[0]))
    return case.inputs()


def _trained(case):
    """(base copy, adapted model after one SGD step, inputs, targets)."""
    torch.manual_seed(0)
    return adapted_after_step(case.build().eval(), lambda: _inputs(case))


def _stream_tensors(model: nn.Module) -> dict[str, int]:
    """Every embedding table, norm weight and class/position token of the model with its last
    axis's size, found by type and shape (independently of the family descriptions): all of
    them carry a residual stream (Swin's patch-merge norms four times side by side)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or is_norm(module):
            found[f"{name}.weight"] = module.weight.shape[-1]
        for key, tensor in module._parameters.items():
            if tensor is not None and tensor.dim() == 3 and tensor.shape[0] == 1:
                found[f"{name}.{key}"] = tensor.shape[-1]  # ViT's cls and position tokens
    return found


def _kept_width(width: int, kept: dict[int, int]) -> int:
    """What a stream tensor of `width` keeps, given kept channels per stream width."""
    return kept[width] if width in kept else 4 * kept[width // 4]


def _prune(model, x, y, units, criterion="taylor", density=0.6, ranking="local"):
    groups = channel_groups(model, x, units=units)
    scores = score(model, criterion, groups, data=[(x, y)])
    apply_masks(model, compute_masks(groups, scores, density, ranking=ranking))
    return refresh_groups(model, groups)


@pytest.mark.parametrize("case", STREAM, ids=IDS)
def test_hidden_group_holds_every_stream_tensor_and_every_criterion_scores_it(case):
    _, model, x, y = _trained(case)
    groups = channel_groups(model, x, units=("hidden",))
    widths = sorted({width for _, _, width, _ in case.stages})  # one stream per stage width
    assert sorted(group.size for group in groups) == widths
    assert {group.unit for group in groups} == {"hidden"}
    members = {member.name for group in groups for member in group.members}
    for path in _stream_tensors(model):
        assert path in members or path.rpartition(".")[0] in members, path
    assert len(_stream_tensors(model)) >= 4  # embeddings and norms exist in every family
    for criterion in CRITERIA.names():
        scores = score(model, criterion, groups, data=[(x, y)])
        for index, group in enumerate(groups):
            assert scores[index].shape == (group.size,)
            assert bool(torch.isfinite(scores[index]).all()), criterion
            assert bool((scores[index] != 0).any()), criterion


@pytest.mark.slow
@pytest.mark.parametrize("units", [("hidden",), ("heads", "ffn", "hidden")], ids=["hidden", "all"])
@pytest.mark.parametrize("case", STREAM, ids=IDS)
def test_hidden_masked_equals_compacted_equals_fused_and_bundle(case, units, tmp_path):
    base, model, x, y = _trained(case)
    with torch.no_grad():
        dense = model(x)
    before = _stream_tensors(model)
    groups = _prune(model, x, y, units)
    kept = {group.size: sum(group.kept) for group in groups if group.unit == "hidden"}
    assert all(0 < count < width for width, count in kept.items()), kept
    with torch.no_grad():
        masked = model(x)
    assert not torch.allclose(masked, dense, atol=1e-5)
    compacted = compact(copy.deepcopy(model), x)
    # Every stream tensor (found by type, not by the description) lost the removed channels.
    assert _stream_tensors(compacted) == {p: _kept_width(w, kept) for p, w in before.items()}
    fused = spa.fuse(copy.deepcopy(compacted))
    with torch.no_grad():
        assert_close_scaled(compacted(x), masked)
        assert_close_scaled(fused(x), masked)
    path = tmp_path / "task.safetensors"
    bundle = spa.save_task(spa.compacted(model), path, base_model=base)
    # Frozen tables and tokens are stored as kept indices, not values (decoders train their
    # head, which is tied to the token embedding).
    entries = {entry["path"]: entry for entry in bundle.metadata["modules"]}
    for name in before:
        owner, _, key = name.rpartition(".")
        tensor = getattr(model.get_submodule(owner), key)
        if tensor.dim() >= 2 and not tensor.requires_grad:
            assert key in entries[owner]["narrowed"], name
            assert key not in entries[owner].get("tensors", {}), name
    host = spa.TaskHost(base)
    host.add_task("task", path)
    with torch.no_grad():
        assert_close_scaled(spa.load_task(base, path)(x), masked)
        assert_close_scaled(host.model("task")(x), masked)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in STREAM if c.decoder], ids=lambda c: c.family)
def test_decoder_with_pruned_hidden_size_generates_the_same_tokens(case, tmp_path):
    base, model, x, y = _trained(case)
    groups = _prune(model, x, y, ("heads", "ffn", "hidden"), criterion="weight", density=0.5)
    assert sum(groups[-1].kept) < HIDDEN
    compacted = compact(copy.deepcopy(model))
    embeddings = compacted.model.get_input_embeddings()
    assert compacted.model.lm_head.weight is embeddings.weight  # tied again after slicing
    assert embeddings.embedding_dim == sum(groups[-1].kept)
    assert_same_generation(model, compacted, base, tmp_path / "task.safetensors")


def test_hidden_round_to_mapping_rounds_only_the_hidden_group():
    case = next(c for c in STREAM if c.family == "llama")
    _, model, x, y = _trained(case)
    groups = channel_groups(model, x, units=("heads", "ffn", "hidden"))
    scores = score(model, "weight", groups)
    masks = compute_masks(groups, scores, 0.55, ranking="local", round_to={"hidden": 8})
    apply_masks(model, masks)
    kept = [sum(g.kept) for g in refresh_groups(model, groups)]
    assert kept[-1] % 8 == 0 and kept[-1] < HIDDEN
    assert any(count % 8 for count in kept[:-1])  # FFN and head counts are not rounded
    with pytest.raises(ConfigError, match="round_to"):
        compute_masks(groups, scores, 0.5, round_to={"hidden": 0})


def test_a_family_without_a_stream_description_is_refused_naming_the_units():
    model = spa.adapt(next(c for c in CASES if c.family == "bert").build(), spa.SPLoRAConfig())
    family = dataclasses.replace(describe(model), stream=None)
    with pytest.raises(ConfigError, match=r"'bert' does not describe its residual stream.*heads"):
        unit_groups(model, family, ("hidden",))


def test_a_model_that_does_not_match_its_stream_description_is_refused_naming_the_path():
    model = spa.adapt(next(c for c in CASES if c.family == "llama").build(), spa.SPLoRAConfig())
    stream = dataclasses.replace(describe(model).stream, block_norms=("pre_norm",))
    family = dataclasses.replace(describe(model), stream=stream)
    with pytest.raises(ConfigError, match=r"block 'model.model.layers.0' has no norm .*pre_norm"):
        unit_groups(model, family, ("hidden",))


def test_a_second_head_reading_the_stream_must_be_named_else_compaction_says_so():
    from spa.errors import SpaError

    teacher = tiny("DeiTForImageClassificationWithTeacher", "DeiTConfig", "image", **IMAGE)
    base = teacher.model.eval()  # the transformers model itself: two heads, keyword inputs
    x = {"pixel_values": torch.randn(2, 3, 8, 8)}
    heads = ["cls_classifier", "distillation_classifier"]
    for head_modules in (None, heads):  # adapt records only the last Linear as the head
        model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2, head_modules=head_modules))
        groups = channel_groups(model, x, units=("hidden",))
        apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.5))
        if head_modules is None:
            with pytest.raises(SpaError, match="second task head.*head_modules"):
                compact(copy.deepcopy(model), x)
            continue
        with torch.no_grad():
            assert_close_scaled(compact(copy.deepcopy(model), x)(**x).logits, model(**x).logits)


@pytest.mark.slow
@pytest.mark.parametrize("case", STREAM, ids=IDS)
def test_hidden_with_fine_pruning_masked_equals_compacted_and_bundle(case, tmp_path):
    torch.manual_seed(0)
    base = case.build().eval()
    model = spa.adapt(copy.deepcopy(base), spa.FinePruningConfig())
    with torch.no_grad():  # fine-tuned weights, different from the base
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    x, y = _inputs(case), torch.tensor([0, 2])
    groups = _prune(model, x, y, ("heads", "ffn", "hidden"), density=0.5)
    assert all(sum(g.kept) < g.size for g in groups if g.unit == "hidden")
    with torch.no_grad():
        masked = model(x)
        assert_close_scaled(spa.fuse(compact(copy.deepcopy(model), x))(x), masked)
        spa.save_task(spa.compacted(model), tmp_path / "task.safetensors", base_model=base)
        assert_close_scaled(spa.load_task(base, tmp_path / "task.safetensors")(x), masked)


def _encoder(model_class, config_class, **options):
    """A tiny encoder of the BERT family with another head (logits out, `Net` wrapper)."""
    options = {"vocab_size": VOCAB, "max_position_embeddings": 20, "num_labels": 3, **options}
    return lambda: tiny(model_class, config_class, "encoder", **options)


# Where the BERT family's heads read the stream: RoBERTa's and ELECTRA's classification heads
# through their own `dense` (no pooler), token classification directly from the final norm.
HEADS_TABLE = {
    "roberta-sequence": _encoder("RobertaForSequenceClassification", "RobertaConfig"),
    "electra-sequence": _encoder(
        "ElectraForSequenceClassification", "ElectraConfig", embedding_size=HIDDEN
    ),
    "bert-token": _encoder("BertForTokenClassification", "BertConfig"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEADS_TABLE))
def test_hidden_size_under_every_bert_family_head(name, tmp_path):
    torch.manual_seed(0)
    base = HEADS_TABLE[name]().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up, std=0.1)
    x = torch.randint(3, VOCAB, (2, 6))
    groups = channel_groups(model, x, units=("heads", "ffn", "hidden"))
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.5, ranking="local"))
    assert sum(refresh_groups(model, groups)[-1].kept) < HIDDEN
    with torch.no_grad():
        masked = model(x)
        assert_close_scaled(spa.fuse(compact(copy.deepcopy(model), x))(x), masked)
        spa.save_task(spa.compacted(model), tmp_path / "task.safetensors", base_model=base)
        assert_close_scaled(spa.load_task(base, tmp_path / "task.safetensors")(x), masked)
