"""SPLoRALayer against an explicit dense Eq. 4, for Linear and Conv1d/2d/3d with groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spa import SPLoRALayer
from spa.errors import ConfigError, UnsupportedLayerError

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _random_masks(layer: SPLoRALayer) -> None:
    out_mask = torch.rand(layer.out_mask.shape) > 0.4
    in_mask = torch.rand(layer.in_mask.shape) > 0.4
    out_mask[0] = in_mask[0] = True  # keep something alive
    if layer.in_mask.numel() > 1:
        in_mask[-1] = False
    out_mask[-1] = False
    layer.out_mask.copy_(out_mask)
    layer.in_mask.copy_(in_mask)


def _expected_weight(layer: SPLoRALayer, base_weight: torch.Tensor) -> torch.Tensor:
    """Eq. 4 written out: W_s * (m_row m_col^T) + (W_down * m_row 1^T)(W_up * 1 m_col^T)."""
    m_row = layer.out_mask.float()
    m_col = layer.in_mask.float()
    mask = torch.outer(m_row, m_col)
    adapter = (layer.down * m_row[:, None]) @ (layer.up * m_col[None, :])
    if base_weight.dim() == 2:
        return base_weight * mask + adapter
    weight = base_weight * mask.reshape(mask.shape + (1,) * (base_weight.dim() - 2))
    centre = tuple(k // 2 for k in base_weight.shape[2:])
    for o in range(weight.shape[0]):
        for i in range(weight.shape[1]):
            weight[(o, i) + centre] += adapter[o, i]
    return weight


def _conv_cases():
    for dims in (1, 2, 3):
        for groups in (1, 2, "depthwise"):
            for stride, dilation, padding in ((1, 1, 1), (2, 2, 2), (2, 1, 3)):
                yield dims, groups, stride, dilation, padding


@pytest.mark.parametrize("dims,groups,stride,dilation,padding", list(_conv_cases()))
def test_splora_conv_matches_explicit_eq4(dims, groups, stride, dilation, padding):
    channels = 4
    groups_value = channels if groups == "depthwise" else groups
    out_channels = 8 if groups != "depthwise" else channels
    base = CONVS[dims](
        channels,
        out_channels,
        3,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups_value,
    )
    base_weight = base.weight.detach().clone()
    layer = SPLoRALayer(base, rank=3)
    base.weight.requires_grad_(False)
    nn.init.normal_(layer.up)
    _random_masks(layer)
    x = torch.randn(2, channels, *([9] * dims))
    expected_weight = _expected_weight(layer, base_weight)
    expected = FUNCTIONAL[dims](
        x, expected_weight, base.bias * layer.out_mask, stride, padding, dilation, groups_value
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # split training path
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # fused path
    assert not torch.allclose(expected, base(x))


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_splora_conv_padding_modes_match_explicit_eq4(mode):
    base = nn.Conv2d(3, 5, 3, padding=1, stride=2, padding_mode=mode)
    base_weight = base.weight.detach().clone()
    layer = SPLoRALayer(base, rank=2)
    base.weight.requires_grad_(False)
    nn.init.normal_(layer.up)
    _random_masks(layer)
    x = torch.randn(2, 3, 8, 7)
    padded = F.pad(x, (1, 1, 1, 1), mode=mode)
    expected = F.conv2d(padded, _expected_weight(layer, base_weight), base.bias * layer.out_mask, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_splora_linear_matches_explicit_eq4():
    base = nn.Linear(10, 7)
    base_weight = base.weight.detach().clone()
    layer = SPLoRALayer(base, rank=4)
    base.weight.requires_grad_(False)
    nn.init.normal_(layer.up)
    _random_masks(layer)
    x = torch.randn(3, 5, 10)
    expected = F.linear(x, _expected_weight(layer, base_weight), base.bias * layer.out_mask)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.fused_weight(), _expected_weight(layer, base_weight))


def test_splora_removed_output_channels_are_zero():
    layer = SPLoRALayer(nn.Conv2d(3, 6, 3, padding=1), rank=2)
    nn.init.normal_(layer.up)
    layer.out_mask[2] = False
    out = layer(torch.randn(2, 3, 5, 5))
    assert torch.count_nonzero(out[:, 2]) == 0
    assert torch.count_nonzero(out[:, 1]) > 0


def test_splora_initial_output_is_near_base():
    base = nn.Conv2d(4, 6, 3, padding=1)
    layer = SPLoRALayer(base, rank=8, init_range=1e-4)
    x = torch.randn(2, 4, 6, 6)
    difference = (layer(x) - base(x)).abs().max()
    assert 0 < difference < 1e-2


def test_splora_fused_cache_follows_optimizer_steps():
    base = nn.Linear(6, 5)
    layer = SPLoRALayer(base, rank=2)
    base.weight.requires_grad_(False)
    base.bias.requires_grad_(False)
    optimizer = torch.optim.SGD([layer.down, layer.up], lr=1.0)
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = layer(x)
    layer(x).pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = layer(x)
        expected = F.linear(x, base.weight + layer.down @ layer.up, base.bias)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


def test_splora_select_channels_preserves_kept_outputs():
    base = nn.Conv2d(4, 6, 3, padding=1)
    layer = SPLoRALayer(base, rank=2)
    nn.init.normal_(layer.up)
    x = torch.randn(2, 4, 5, 5)
    keep_out, keep_in = torch.tensor([0, 2, 5]), torch.tensor([1, 3])
    layer.in_mask.copy_(torch.tensor([False, True, False, True]))
    expected = layer(x)[:, keep_out]
    layer.select_channels(keep_out, keep_in)
    assert layer.base.weight.shape == (3, 2, 3, 3)
    assert base.weight.shape == (6, 4, 3, 3)  # the original base is untouched
    assert layer.out_indices.tolist() == [0, 2, 5] and layer.in_indices.tolist() == [1, 3]
    torch.testing.assert_close(layer(x[:, keep_in]), expected, rtol=1e-5, atol=1e-6)


def test_splora_rejects_even_kernel_with_layer_name():
    with pytest.raises(UnsupportedLayerError, match=r"layer1\.0\.conv2.*kernel_size=\(4, 4\)"):
        SPLoRALayer(nn.Conv2d(3, 3, 4), rank=2, name="layer1.0.conv2")


def test_splora_rejects_conv_transpose_by_name():
    with pytest.raises(UnsupportedLayerError, match="up.*ConvTranspose2d.*transposed"):
        SPLoRALayer(nn.ConvTranspose2d(3, 3, 3), rank=2, name="up")


def test_splora_rejects_unsupported_type():
    with pytest.raises(UnsupportedLayerError, match="emb: Embedding is not supported"):
        SPLoRALayer(nn.Embedding(4, 3), rank=2, name="emb")


def test_splora_rejects_negative_rank():
    with pytest.raises(ConfigError, match="fc: rank must be >= 0, got -1"):
        SPLoRALayer(nn.Linear(3, 3), rank=-1, name="fc")


@pytest.mark.parametrize(
    "dims,stride,dilation,padding",
    [
        (0, 1, 1, 0),
        (1, 1, 1, 1),
        (1, 2, 2, 3),
        (2, 1, 1, 1),
        (2, 2, 1, 1),
        (2, 1, 2, 0),
        (3, 2, 1, 1),
    ],
)
def test_splora_gradients_match_autograd_of_explicit_eq4(dims, stride, dilation, padding):
    if dims == 0:
        base = nn.Linear(6, 5)
        x = torch.randn(3, 4, 6, requires_grad=True)
    else:
        base = CONVS[dims](4, 5, 3, stride=stride, dilation=dilation, padding=padding)
        x = torch.randn(2, 4, *([8] * dims), requires_grad=True)
    base.requires_grad_(False)
    layer = SPLoRALayer(base, rank=3)
    nn.init.normal_(layer.up)
    _random_masks(layer)
    layer(x).square().sum().backward()
    got = [layer.down.grad.clone(), layer.up.grad.clone(), x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    weight = _expected_weight(layer, base.weight)
    bias = base.bias * layer.out_mask
    if dims == 0:
        expected_out = F.linear(x, weight, bias)
    else:
        expected_out = FUNCTIONAL[dims](x, weight, bias, stride, padding, dilation)
    expected_out.square().sum().backward()
    for a, b in zip(got, [layer.down.grad, layer.up.grad, x.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_splora_fused_backward_passes_gradcheck():
    base = nn.Conv2d(3, 4, 3, stride=2, padding=1).double().requires_grad_(False)
    layer = SPLoRALayer(base, rank=2)
    _random_masks(layer)
    x = torch.randn(1, 3, 5, 5, dtype=torch.double, requires_grad=True)
    down = layer.down.detach().clone().requires_grad_(True)
    up = torch.randn_like(layer.up).requires_grad_(True)
    from spa.adapters.splora._autograd import FusedLowRank

    assert torch.autograd.gradcheck(
        lambda x, d, u: FusedLowRank.apply(x, d, u, layer), (x, down, up)
    )
