"""Distillation from the unpruned model: the KL falls, the teacher stays as it was and shares
the base weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.recovery import DistillConfig, Distiller, Teacher, kl_to_teacher
from tests.pruning._nets import mlp


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = spa.adapt(mlp(), spa.SPLoRAConfig(rank=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("down", "up")):
                parameter.normal_(std=0.3)
    x = torch.randn(64, 12)
    y = torch.randint(0, 3, (64,))
    return model, x, y


def _prune(model, x):
    groups = channel_groups(model, x)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5))


def _train(model, x, y, distiller, steps=40):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    model.train()
    for _ in range(steps):
        output = model(x)
        loss = nn.functional.cross_entropy(output, y)
        if distiller is not None:
            loss = distiller.loss(model, x, output, loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _kl(teacher_logits, model, x):
    with torch.no_grad():
        return float(kl_to_teacher(model.eval()(x), teacher_logits))


def test_kl_to_teacher_matches_the_formula():
    student, teacher = torch.randn(4, 5, 7), torch.randn(4, 5, 7)
    t = 3.0
    p = torch.softmax(teacher / t, -1)
    expected = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    torch.testing.assert_close(kl_to_teacher(student, teacher, t), expected)


def test_distillation_lowers_the_kl_to_the_teacher_more_than_the_task_loss():
    results = {}
    for distil in (False, True):
        model, x, y = _problem()
        teacher = Teacher(model)
        with torch.no_grad():
            teacher_logits = model.eval()(x)
        _prune(model, x)
        before = _kl(teacher_logits, model, x)
        config = DistillConfig(weight=1.0, temperature=2.0)
        _train(model, x, y, Distiller(config, teacher) if distil else None)
        results[distil] = _kl(teacher_logits, model, x)
    assert results[True] < 0.5 * before
    assert results[True] < results[False]


def test_teacher_is_untouched_and_shares_the_base_weights():
    model, x, y = _problem()
    teacher = Teacher(model)
    with torch.no_grad():
        expected = model.eval()(x)
    state = {name: tensor.clone() for name, tensor in teacher.state.items()}
    _prune(model, x)
    _train(model, x, y, Distiller(DistillConfig(weight=0.5), teacher), steps=5)
    for name, tensor in teacher.state.items():
        assert torch.equal(tensor, state[name]), name
    # The teacher's forward reads the student's own base tensors (no copy of them).
    pointers = {}
    layers = dict(spa.adapter_layers(model))
    handles = [
        layer.base.register_forward_pre_hook(
            lambda m, a, n=name: pointers.__setitem__(n, m.weight.data_ptr())
        )
        for name, layer in layers.items()
    ]
    try:
        torch.testing.assert_close(teacher(model, x), expected)
    finally:
        for handle in handles:
            handle.remove()
    # Pre-hooks do not fire for an adapter's base (its forward calls the weight directly), so
    # check storage: no base weight is held by the teacher.
    held = {tensor.data_ptr() for tensor in teacher.state.values()}
    for name, layer in layers.items():
        assert layer.base.weight.data_ptr() not in held, name
        assert pointers.get(name, layer.base.weight.data_ptr()) == layer.base.weight.data_ptr()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert teacher.stored_elements() == trainable + sum(
        b.numel() for n, b in model.named_buffers() if not n.rsplit(".", 1)[-1].startswith("spa_")
    )
    assert teacher.stored_elements() < sum(layer.base.weight.numel() for layer in layers.values())


def test_hidden_state_matching_needs_modules_and_adds_the_mse():
    with pytest.raises(ConfigError, match="hidden_modules"):
        DistillConfig(hidden_weight=1.0)
    model, x, y = _problem()
    teacher = Teacher(model)
    _prune(model, x)
    config = DistillConfig(weight=0.0, hidden_weight=1.0, hidden_modules=("0",))
    distiller = Distiller(config, teacher, model)
    output = model(x)
    task = nn.functional.cross_entropy(output, y)
    student_hidden = model[0](x).detach()
    loss = distiller.loss(model, x, output, task)
    # Independent: the unpruned first layer's output from the snapshot tensors by hand.
    state = teacher.state
    down, up = state["0.down"], state["0.up"]
    first = x @ (model[0].base.weight + down @ up).T + model[0].base.bias
    expected = task + nn.functional.mse_loss(student_hidden, first)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    distiller.close()


@pytest.mark.parametrize("module", ["spa.experiments.demo", "spa.experiments.demo_lm"])
def test_demo_configs_carry_the_distillation_weight(module, tmp_path):
    import dataclasses
    import importlib

    demo = importlib.import_module(module)
    settings = dataclasses.replace(demo.QUICK, distill=0.3)
    configs = demo.experiment_configs(settings, tmp_path / "source.safetensors")
    assert configs and all(config.distill.weight == 0.3 for config in configs)
    assert all(config.name.endswith("-distilled") for config in configs)  # results never mix
    plain = demo.experiment_configs(demo.QUICK, tmp_path / "source.safetensors")
    assert all(not config.distill.is_active for config in plain)
