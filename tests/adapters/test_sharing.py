"""`spa.task_model` / `spa.shared_copy`: a task model over the base's own weight storage, which
training never writes into, and which bundles and task hosts accept (issue 22 item 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.models.tiny_lm import tiny_llama
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from spa.tasks.fingerprint import fingerprint


def _storage(model: nn.Module) -> dict[str, int]:
    return {name: tensor.data_ptr() for name, tensor in model.named_parameters()}


def test_task_model_adapts_layers_over_the_bases_own_weight_storage():
    base = tiny_llama()
    task = spa.task_model(base, spa.SPLoRAConfig(rank=2, trainable=()))
    adapted = dict(spa.adapter_layers(task))
    assert adapted and not list(spa.adapter_layers(base))  # the base stays plain
    for name, layer in adapted.items():
        assert layer.base.weight.data_ptr() == base.get_submodule(name).weight.data_ptr()
    frozen = _storage(base)
    shared = {n: p for n, p in _storage(task).items() if n in frozen}
    assert shared == {n: frozen[n] for n in shared} and "model.embed_tokens.weight" in shared
    assert all(p.requires_grad for p in base.parameters())  # the base's flags are its own


def test_training_a_task_model_never_writes_into_the_base():
    torch.manual_seed(0)
    base = tiny_llama()
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    task = spa.task_model(base, spa.SPLoRAConfig(rank=2, trainable=("norm", "head")))
    trained = [p for p in task.parameters() if p.requires_grad]
    assert not {p.data_ptr() for p in trained} & set(_storage(base).values())
    assert task.lm_head.weight is task.model.embed_tokens.weight  # still tied, own copy
    optimizer = torch.optim.SGD(trained, lr=1.0)
    ids = torch.randint(0, 256, (2, 6))
    task(ids, labels=ids).loss.backward()
    optimizer.step()
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not torch.equal(task.model.norm.weight, base.model.norm.weight)


def test_a_fine_pruned_task_model_trains_its_own_copy_of_the_weights():
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    task = spa.task_model(base, spa.FinePruningConfig())
    layer = task[0]
    assert layer.base.weight.requires_grad
    assert layer.base.weight.data_ptr() != base[0].weight.data_ptr()
    torch.testing.assert_close(layer.base.weight, base[0].weight, rtol=0, atol=0)


def test_shared_copy_aliases_every_parameter_and_keeps_ties():
    base = tiny_llama()
    copy = spa.shared_copy(base)
    assert _storage(copy) == _storage(base)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert copy.lm_head.weight is not base.lm_head.weight  # new objects, same storage


@pytest.mark.slow
def test_bundles_and_hosts_take_a_base_that_shares_memory_with_the_task(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    reference = fingerprint(base)
    task = spa.task_model(base, spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(task):
        nn.init.normal_(layer.up, std=0.05)
    groups = channel_groups(task, None, units=("heads", "ffn"))
    apply_masks(task, compute_masks(groups, score(task, "weight", groups), density=0.6))
    spa.save_task(spa.compacted(task), tmp_path / "task.safetensors", base_model=base)
    assert fingerprint(base) == reference  # compacted() sliced a copy, not the shared weights
    host = spa.TaskHost(base)
    host.add_task("task", tmp_path / "task.safetensors")
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        expected = task.eval()(ids).logits
        got = host.model("task")(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert fingerprint(base) == reference


def test_a_frozen_only_shared_copy_copies_what_trains():
    base = tiny_llama()
    task = spa.task_model(base, spa.SPLoRAConfig(rank=2, trainable=("norm",)))
    copy = spa.shared_copy(task, frozen_only=True)
    for (name, original), (_, copied) in zip(task.named_parameters(), copy.named_parameters()):
        shared = original.data_ptr() == copied.data_ptr()
        assert shared != original.requires_grad, name
        torch.testing.assert_close(copied, original, rtol=0, atol=0)


def test_a_gpt2_task_model_shares_the_conv1d_weights_as_transposed_views():
    """transformers' Conv1D stores (in, out): the adapted Linear's weight is its `.t()` view."""
    from tests._transformers import gpt2

    base = gpt2().eval()
    task = spa.task_model(base, spa.SPLoRAConfig(rank=2, trainable=()))
    adapted = dict(spa.adapter_layers(task))
    assert len(adapted) == 8
    for name, layer in adapted.items():
        conv = base.get_submodule(name)
        assert type(conv).__name__ == "Conv1D"
        assert layer.base.weight.data_ptr() == conv.weight.data_ptr()
        assert layer.base.weight.stride() == conv.weight.t().stride()
        torch.testing.assert_close(layer.base.weight, conv.weight.t(), rtol=0, atol=0)
        with torch.no_grad():
            layer.up.zero_()  # the adapted model is then the base
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(task(x), base(x), rtol=1e-5, atol=1e-6)


def test_a_fine_pruned_gpt2_task_model_trains_contiguous_copies():
    from tests._transformers import gpt2

    base = gpt2().eval()
    task = spa.task_model(base, spa.FinePruningConfig())
    for name, layer in spa.adapter_layers(task):
        weight, conv = layer.base.weight, base.get_submodule(name)
        assert weight.requires_grad and weight.is_contiguous()
        assert weight.data_ptr() != conv.weight.data_ptr()
        torch.testing.assert_close(weight, conv.weight.t(), rtol=0, atol=0)
