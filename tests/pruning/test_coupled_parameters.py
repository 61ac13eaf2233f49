"""Bare per-channel parameters on a pruned axis: sliced with their group, or the group refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError, SpaError, SpaWarning
from spa.pruning import apply_masks, channel_groups, compute_masks, score


class _Scale(nn.Module):
    """A per-channel scale (elementwise multiplication): spa slices it with its group."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class _Mixing(nn.Module):
    """A per-channel parameter normalised across channels: slicing it would change kept ones."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logits.softmax(dim=0).view(1, -1, 1, 1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.mixing = _Mixing(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = _Scale(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mixing(self.conv1(x)))
        x = torch.relu(self.scale(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def adapted():
    model = spa.adapt(_Net().eval(), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up, std=0.1)
    return model


def test_channel_groups_refuse_a_parameter_spa_cannot_slice(adapted):
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(SpaWarning) as record:
        groups = channel_groups(adapted, x)
    message = " ".join(str(w.message) for w in record)
    assert "conv1" in message and "mixing.logits" in message and "Softmax" in message
    roots = {group.root for group in groups}
    members = {member.name for group in groups for member in group.members}
    assert "conv1" not in roots and "mixing.logits" not in members
    assert {"conv2", "conv3"} <= roots


def test_a_refused_group_keeps_its_channels_and_the_model_stays_exact(adapted):
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(SpaWarning):
        groups = channel_groups(adapted, x)
    apply_masks(adapted, compute_masks(groups, score(adapted, "weight", groups), density=0.5))
    masked = adapted(x).detach()
    spa.compact(adapted, x)
    torch.testing.assert_close(adapted(x).detach(), masked, rtol=1e-4, atol=1e-5)
    assert adapted.conv1.base.weight.shape[0] == 8 and adapted.mixing.logits.numel() == 8
    kept = adapted.conv2.base.weight.shape[0]
    assert kept < 8 and adapted.scale.scale.numel() == kept


def test_a_per_channel_scale_is_a_group_member(adapted):
    with pytest.warns(SpaWarning):
        groups = channel_groups(adapted, torch.randn(2, 3, 8, 8))
    group = next(g for g in groups if g.root == "conv2")
    member = next(m for m in group.members if m.name == "scale.scale")
    assert member.role == "param" and member.positions == tuple(range(8))


_KEEP = torch.tensor([True, False, True, True, False, True, True, False])


def test_a_per_channel_scale_is_sliced_to_the_kept_channels(adapted):
    x = torch.randn(2, 3, 8, 8)
    scale = adapted.scale.scale.detach().clone()
    masks = {"conv2": {"out_mask": _KEEP}, "conv3": {"in_mask": _KEEP}}
    apply_masks(adapted, {**masks, "scale.scale": {"out_mask": _KEEP}})
    masked = adapted(x).detach()
    spa.compact(adapted, x)
    torch.testing.assert_close(adapted.scale.scale.detach(), scale[_KEEP])
    torch.testing.assert_close(adapted(x).detach(), masked, rtol=1e-4, atol=1e-5)


def test_compact_names_the_likely_cause_when_a_tensor_was_not_sliced(adapted):
    x = torch.randn(2, 3, 8, 8)
    apply_masks(adapted, {"conv2": {"out_mask": _KEEP}, "conv3": {"in_mask": _KEEP}})
    with pytest.raises(SpaError, match="not sliced with its group"):
        spa.compact(adapted, x)


def test_apply_masks_rejects_a_parameter_mask_of_the_wrong_length(adapted):
    with pytest.raises(ConfigError, match="scale.scale has 8 channels, the mask has 3"):
        apply_masks(adapted, {"scale.scale": {"out_mask": torch.ones(3, dtype=torch.bool)}})


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation: slicing input channels changes every kept output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean()) / self.weight.std()
        return self._conv_forward(x, weight, self.bias)


def test_a_group_through_a_conv_with_its_own_forward_is_refused():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _StandardisedConv(8, 8, 3, padding=1)
    )
    model.append(nn.Flatten()).append(nn.Linear(8 * 4 * 4, 2))
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    assert "_StandardisedConv overrides Conv2d.forward" in model.spa_report.skipped["2"]
    with pytest.warns(SpaWarning, match=r"rooted at 0 .*_StandardisedConv overrides"):
        groups = channel_groups(model, torch.randn(2, 3, 4, 4))
    assert "0" not in {group.root for group in groups}


class _BufferScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("gain", torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


class _BufferShift(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.view(1, -1, 1, 1)


def _buffer_net() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        _BufferShift(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        _BufferScale(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )
    return spa.adapt(model.eval(), spa.SPLoRAConfig(rank=2))


def test_per_channel_buffers_are_sliced_or_their_group_refused():
    model, x = _buffer_net(), torch.randn(2, 3, 4, 4)
    with pytest.warns(SpaWarning, match=r"rooted at 0 .*1\.shift.*AddBackward"):
        groups = channel_groups(model, x)
    group = next(g for g in groups if g.root == "3")
    assert any(m.name == "4.gain" and m.role == "param" for m in group.members)
    assert "0" not in {g.root for g in groups}
    gain = model[4].gain.clone()
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), density=0.6))
    masked = model(x).detach()
    spa.compact(model, x)
    kept = model[3].out_indices
    assert len(kept) < 8 and torch.equal(model[4].gain, gain[kept])
    assert model[1].shift.numel() == 8
    torch.testing.assert_close(model(x).detach(), masked, rtol=1e-4, atol=1e-5)
