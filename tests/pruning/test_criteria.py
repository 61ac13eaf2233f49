"""Weight, Gradient and Taylor criteria against hand computations, and `score`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.pruning import CRITERIA, channel_groups, score
from tests.pruning._nets import ResidualNet


def _two_layer():
    """Linear(3 -> 4) adapted with rank 1 (non-zero adapter), ReLU, head Linear(4 -> 2)."""
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    spa.adapt(model, spa.SPLoRAConfig(rank=1))
    with torch.no_grad():
        model[0].up.normal_()
    return model


def _fused(layer):
    return layer.base.weight + layer.down @ layer.up  # Eq. 4 with all-ones masks


def _loss(outputs, targets):
    return (outputs * targets).sum()


def test_criteria_registry_names_and_unknown():
    assert {"weight", "gradient", "taylor", "lrp"} <= set(CRITERIA.names())
    with pytest.raises(ConfigError, match="unknown criterion 'magic'; known: .*taylor"):
        CRITERIA.get("magic")


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_weight_criterion_is_lp_norm_of_adapted_rows(p):
    model = _two_layer()
    stats = CRITERIA.get("weight")(model, {"0": model[0]}, norm_p=p)
    with torch.no_grad():
        expected = _fused(model[0]).abs().pow(p).sum(dim=1).pow(1 / p)
    torch.testing.assert_close(stats["0"], expected)


def _hand_gradients(model, x, t):
    with torch.no_grad():
        weight, head = _fused(model[0]), model[2].weight
        z = x @ weight.T  # (N, 4)
        delta = (t @ head) * (z > 0)  # dL/dz
    return z, delta


def test_gradient_criterion_matches_hand_computation():
    model = _two_layer()
    batches = [(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(2)]
    stats = CRITERIA.get("gradient")(model, {"0": model[0]}, data=batches, loss_fn=_loss)
    expected = 0
    for x, t in batches:
        _, delta = _hand_gradients(model, x, t)
        expected = expected + (delta.T @ x).abs().sum(dim=1)  # |dL/dW| per row
    torch.testing.assert_close(stats["0"], expected / 2)


def test_taylor_criterion_matches_hand_computation():
    model = _two_layer()
    batches = [(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(2)]
    stats = CRITERIA.get("taylor")(model, {"0": model[0]}, data=batches, loss_fn=_loss)
    expected = 0
    for x, t in batches:
        z, delta = _hand_gradients(model, x, t)
        expected = expected + (z * delta).abs().sum(dim=0)  # sum_n |a g|
    torch.testing.assert_close(stats["0"], expected / 10)


@pytest.mark.parametrize("frozen", [False, True])
def test_taylor_scores_stacked_layers_from_their_own_outputs(frozen):
    """Both scored layers of a chain, trainable adapters or a fully frozen model (the first
    layer's output is then a leaf of the graph), against the gradients written out."""
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.ReLU(),
        nn.Linear(4, 2, bias=False),
    )  # fmt: skip
    spa.adapt(model, spa.SPLoRAConfig(rank=1))
    for layer in (model[0], model[2]):
        nn.init.normal_(layer.up)
    if frozen:
        model.requires_grad_(False)
    batches = [(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(2)]
    layers = {"0": model[0], "2": model[2]}
    stats = CRITERIA.get("taylor")(model, layers, data=batches, loss_fn=_loss)
    expected = {"0": 0, "2": 0}
    with torch.no_grad():
        first, second, head = _fused(model[0]), _fused(model[2]), model[4].weight
        for x, t in batches:
            z1 = x @ first.T
            z2 = torch.relu(z1) @ second.T
            g2 = (t @ head) * (z2 > 0)  # dL/dz2
            g1 = (g2 @ second) * (z1 > 0)  # dL/dz1
            expected["0"] = expected["0"] + (z1 * g1).abs().sum(dim=0)
            expected["2"] = expected["2"] + (z2 * g2).abs().sum(dim=0)
    for name in layers:
        torch.testing.assert_close(stats[name], expected[name] / 10)
    assert all(p.grad is None for p in model.parameters())


def test_taylor_copies_no_weight():
    """With no weight cache, scoring allocates no tensor of a scored layer's weight shape (the
    criterion once cloned every scored weight and ran the layer again)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 2))
    spa.cache_fused_weights(spa.adapt(model, spa.SPLoRAConfig(rank=2)), False)
    shapes = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and func is not torch.ops.aten.detach.default:
                shapes.append(tuple(out.shape))
            return out

    data = [(torch.randn(4, 7), torch.randn(4, 2))]
    with Allocations():
        stats = CRITERIA.get("taylor")(model, {"0": model[0]}, data=data, loss_fn=_loss)
    assert stats["0"].shape == (9,) and bool((stats["0"] > 0).any())
    assert (9, 7) not in shapes


def test_taylor_criterion_averages_over_conv_positions():
    conv = nn.Conv1d(2, 3, 1, bias=False)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(12, 1, bias=False))
    spa.adapt(model, spa.FinePruningConfig())
    x, t = torch.randn(2, 2, 4), torch.ones(2, 1)
    stats = CRITERIA.get("taylor")(model, {"0": model[0]}, data=[(x, t)], loss_fn=_loss)
    with torch.no_grad():
        a = torch.einsum("oi,nil->nol", conv.weight[:, :, 0], x)  # (N, 3, 4)
        g = model[2].weight.reshape(3, 4).expand(2, 3, 4)  # dL/da
        expected = (a * g).mean(dim=2).abs().mean(dim=0)
    torch.testing.assert_close(stats["0"], expected)


def test_score_normalises_per_layer_and_averages_producers():
    model = spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 3, 8, 8))
    scores = score(model, "weight", groups)
    index = next(i for i, g in enumerate(groups) if g.root == "shortcut")
    with torch.no_grad():
        norms = [
            model.get_submodule(n).fused_weight().flatten(1).norm(dim=1)
            for n in ("shortcut", "conv_b")
        ]
    expected = sum(v / v.norm() for v in norms) / 2
    torch.testing.assert_close(scores[index], expected.float())
    assert set(scores) == set(range(len(groups)))


def test_score_reduce_fn_sees_statistics_before_normalisation():
    model = _two_layer()
    groups = channel_groups(model, torch.randn(2, 3))
    seen = {}

    def reduce_fn(statistics):
        seen.update(statistics)
        return {name: value * 0 + 1 for name, value in statistics.items()}

    scores = score(model, "weight", groups, reduce_fn=reduce_fn)
    assert set(seen) == {"0"}
    torch.testing.assert_close(scores[0], torch.full((4,), 0.5))  # ones / ||ones||


def test_score_data_criteria_need_data_and_keep_model_state():
    model = _two_layer()
    groups = channel_groups(model, torch.randn(2, 3))
    with pytest.raises(ConfigError, match="criterion 'taylor' needs data"):
        score(model, "taylor", groups)
    model.train()
    score(model, "gradient", groups, data=[(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))])
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_lrp_criterion_sums_channel_relevance_over_samples():
    from spa.pruning import lrp

    model = _two_layer()
    x, t = torch.randn(6, 3), torch.randint(0, 2, (6,))
    stats = CRITERIA.get("lrp")(model, {"0": model[0]}, data=[(x, t)], lrp_epsilon=0.0)
    expected = lrp(model, x, t, epsilon=0.0).layers["0"].sum(dim=0) / 6
    torch.testing.assert_close(stats["0"], expected)
    with torch.no_grad():  # bias-free z-rule at the head: R(a) = a * w_target
        a = torch.relu(x @ _fused(model[0]).T)
        torch.testing.assert_close(expected, (a * model[2].weight[t]).mean(dim=0))
