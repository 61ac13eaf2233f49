"""Issue 25's recovery tools on every architecture of the open-world table (built from the family
registry plus the named table): SPLoRA ranks allocated under a budget, the units pruned, one
distillation step from the snapshot teacher, and the heterogeneous-rank task deployed."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

import spa
from spa.accounting import learned_parameters
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from spa.recovery import DistillConfig, Distiller, RankAllocationConfig, Teacher, ranks
from tests._transformers import adapted_after_step, assert_deploys
from tests.architectures._open_world import cases

CASES = cases()
WEIGHT, TEMPERATURE = 0.5, 2.0


def _kl_by_formula(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`T^2 mean_rows sum_c p_t (log p_t - log p_s)` at temperature `T`, written out."""
    log_student = torch.log(torch.softmax(student / TEMPERATURE, dim=-1))
    p_teacher = torch.softmax(teacher / TEMPERATURE, dim=-1)
    rows = (p_teacher * (torch.log(p_teacher) - log_student)).sum(-1)
    return rows.mean() * TEMPERATURE**2


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_allocated_ranks_and_distillation_deploy_on_every_architecture(case, tmp_path):
    torch.manual_seed(0)
    base, model, x, y = adapted_after_step(case.build(), case.inputs, rank=4)
    before = ranks(model)
    allocated = RankAllocationConfig(budget=0.5).allocate(model)
    assert set(allocated) == set(before)
    assert sum(allocated.values()) == max(len(before), round(0.5 * sum(before.values())))
    assert len(set(allocated.values())) > 1, "the budget went to every layer alike"

    teacher = Teacher(model)  # the unpruned model with its allocated ranks
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(teacher.state), "the teacher copied base weights"
    with torch.no_grad():
        unpruned = model(x)

    groups = channel_groups(model, x, units=case.units)
    scores = score(model, "taylor", groups, data=[(x, y)])
    apply_masks(model, compute_masks(groups, scores, 0.3, ranking="local", round_to={"hidden": 4}))

    distiller = Distiller(DistillConfig(weight=WEIGHT, temperature=TEMPERATURE), teacher)
    logits = model(x)
    task = functional.cross_entropy(logits, y)
    loss = distiller.loss(model, x, logits, task)
    expected = (1 - WEIGHT) * task + WEIGHT * _kl_by_formula(logits, unpruned)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-0.1)
        torch.testing.assert_close(teacher(model, x), unpruned)  # untouched by the step
        masked = model(x)

    adapters = dict(spa.adapter_layers(model))
    expected_adapter = sum(
        layer.down.shape[1] * (int(layer.out_mask.sum()) + int(layer.in_mask.sum()))
        for layer in adapters.values()
        if getattr(layer, "rank", 0) > 0
    )
    assert learned_parameters(model).by_kind["adapter"] == expected_adapter
    assert_deploys(model, base, x, masked, tmp_path / "task.safetensors")
