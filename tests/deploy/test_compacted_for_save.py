"""`spa.compacted_for_save`: a compacted copy for `save_task` that holds no base weight copy."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from torch import nn

import spa
from spa.adapters.registry import ADAPTER_KINDS
from spa.codec.records import narrowing, recorded
from spa.models.tiny_lm import tiny_llama
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from spa.tasks import load_task, save_task
from tests._transformers import VOCAB, gpt2


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _llama_ids() -> tuple[nn.Module, torch.Tensor]:
    return tiny_llama(), torch.randint(0, 256, (2, 5))


def _gpt2_ids() -> tuple[nn.Module, torch.Tensor]:
    return gpt2(), torch.randint(0, VOCAB, (2, 5))


# (name, base and inputs, pruned units): a plain MLP, a Llama decoder with heads, FFN and
# hidden size, and GPT-2 (transformers Conv1D layers, whose base weights are transposed views)
# with and without its hidden size.
CASES = {
    "mlp": (lambda: (_mlp(), torch.randn(4, 6)), None),
    "llama": (_llama_ids, ("heads", "ffn", "hidden")),
    "gpt2": (_gpt2_ids, ("heads", "ffn")),
    "gpt2-hidden": (_gpt2_ids, ("heads", "ffn", "hidden")),
}
CONFIGS = {
    "splora": lambda: spa.SPLoRAConfig(rank=2),
    "splora-frozen-head": lambda: spa.SPLoRAConfig(rank=2, trainable=("norm",)),
    "fine": spa.FinePruningConfig,
}


def _task(case: str, config: str = "splora") -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A plain base, its masked task model sharing its frozen weights, and inputs."""
    torch.manual_seed(0)
    make, units = CASES[case]
    base, x = make()
    base = base.eval()
    model = spa.task_model(base, CONFIGS[config]())
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            for parameter in layer.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter), alpha=0.02)  # trained tensors
    example = None if units else (x,)
    groups = channel_groups(model, example, units=units)
    masks = compute_masks(groups, score(model, "weight", groups), density=0.5, ranking="local")
    apply_masks(model, masks)
    return base, model.eval(), x


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _base_storage_layers(model: nn.Module, base: nn.Module) -> set[str]:
    """Adapter layers of `model` whose frozen base weight is memory of `base` (by data_ptr)."""
    storage = {p.data_ptr() for p in base.parameters()}
    return {
        name
        for name, layer in spa.adapter_layers(model)
        if not layer.base.weight.requires_grad and layer.base.weight.data_ptr() in storage
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_frozen_weights_are_base_storage_or_meta(case):
    base, model, _ = _task(case)
    shared = _base_storage_layers(model, base)
    adapted = {name for name, _ in spa.adapter_layers(model)}
    assert shared == adapted  # GPT-2's Conv1D layers too: a transposed view of their weight
    for_save = spa.compacted_for_save(model, base)
    layers = dict(spa.adapter_layers(for_save))
    assert set(layers) == adapted
    storage = {p.data_ptr() for p in base.parameters()}
    # A shared weight becomes a placeholder (no full-size or sliced copy), any other is sliced.
    for name, layer in layers.items():
        weight = layer.base.weight
        assert weight.is_meta == (name in shared), name
        assert weight.is_meta or weight.data_ptr() not in storage
        assert weight.shape[0] == int(model.get_submodule(name).out_mask.sum())
    assert not any(p.is_meta for p in model.parameters())  # the task model is untouched


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_bundle_is_the_compacted_bundle_and_loads_to_the_masked_model(case, config, tmp_path):
    base, model, x = _task(case, config)
    reference, placeholder = tmp_path / "compacted.safetensors", tmp_path / "for_save.safetensors"
    save_task(spa.compacted(model), reference, base_model=base)
    save_task(spa.compacted_for_save(model, base), placeholder, base_model=base)
    assert _sha(placeholder) == _sha(reference)
    loaded = load_task(base, placeholder)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model, x), rtol=1e-5, atol=1e-5)


def test_unmasked_model_is_returned_itself():
    torch.manual_seed(0)
    base = _mlp().eval()
    model = spa.task_model(base, spa.SPLoRAConfig(rank=2))
    assert spa.compacted_for_save(model, base) is model


def test_kinds_whose_codec_reads_no_placeholder_are_sliced(monkeypatch):
    base, model, _ = _task("llama")
    kind = ADAPTER_KINDS.get("splora")
    codec = dataclasses.replace(kind.codec, meta_base_weights=False)
    monkeypatch.setattr(ADAPTER_KINDS, "get", lambda name: dataclasses.replace(kind, codec=codec))
    for_save = spa.compacted_for_save(model, base)
    assert not any(layer.base.weight.is_meta for _, layer in spa.adapter_layers(for_save))


@pytest.mark.parametrize("case", ["llama", "gpt2-hidden"])
def test_embedding_and_lm_head_of_a_pruned_hidden_size_are_placeholders(case):
    """Their kept positions are compaction's record, equal to a search of the base's values."""
    base, model, _ = _task(case, "splora-frozen-head")  # a frozen embedding and LM head
    for_save = spa.compacted_for_save(model, base)
    compacted = spa.compacted(model)
    names = [n for n, _ in base.named_modules() if n.endswith(("embed_tokens", "wte", "lm_head"))]
    assert len(names) == 2
    for name in names:
        weight, base_weight = for_save.get_submodule(name).weight, base.get_submodule(name).weight
        assert weight.is_meta and weight.shape[1] < base_weight.shape[1], name
        axis, kept = recorded(for_save.get_submodule(name), "weight")
        search = narrowing(compacted.get_submodule(name).weight, base_weight)
        assert axis == search[0] == 1 and torch.equal(kept, search[1]), name
    tokens, head = (for_save.get_submodule(name).weight for name in names)
    assert head is tokens  # still tied
