"""Whole-map F(m×m, 3×3) convolutions (leanspike.winograd_map): the transforms against the
1-D correlation they stand for, forward and input gradient against PyTorch's convolution in
float64, the float32 path the engine takes against a float64 reference, and BPTT's gradients
through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import BPTT
from leanspike import winograd_map
from leanspike.multistep import Conv2dSequence

from conftest import assert_gradients_close, float32_and_float64_gradients, float64_conv_reference


@pytest.mark.parametrize("m", sorted(winograd_map.POINTS))
def test_transforms_compute_the_correlation(m):
    """``Aᵀ[(G g) ⊙ (Bᵀ d)]`` is ``y[i] = Σ_k g[k]·d[i+k]`` for every basis pair (g, d), so for all."""
    at, g, bt = winograd_map.transforms(m)
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    assert torch.equal(bt, bt.round())  # integer input transform
    for k in range(3):
        for j in range(m + 2):
            y = at @ (g[:, k] * bt[:, j])
            want = torch.tensor([float(j == i + k) for i in range(m)], dtype=torch.float64)
            torch.testing.assert_close(y, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape,padding", [
    ((2, 3, 4, 3, 3), (1, 1)),   # VGG-11's last stage on 48×48 inputs
    ((2, 3, 4, 2, 2), (1, 1)),   # on 32×32 inputs
    ((2, 3, 4, 4, 4), (1, 1)),   # ResNet-18's last stage on 32×32 inputs
    ((3, 2, 5, 4, 6), (0, 0)),   # no padding, 2×4 output
    ((2, 3, 4, 2, 4), (1, 0)),   # different padding per axis
    ((1, 2, 3, 1, 1), (2, 2)),   # full padding: 1×1 map → 3×3 output
])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_gradient_equal_the_convolution(shape, padding, bias):
    torch.manual_seed(0)
    n, c, o, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64)
    b = torch.randn(o, dtype=torch.float64) if bias else None
    ref = F.conv2d(x, weight, b, 1, padding)
    g = torch.randn_like(ref)
    want_x, = torch.autograd.grad(ref, x, g)

    sides = winograd_map.output_sides(x, padding)
    kernels = winograd_map.kernel_transform(weight, sides)
    got = winograd_map.conv3x3(x.detach(), kernels, b, padding)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=1e-12)
    got_x = winograd_map.conv3x3_input_grad(g, kernels, padding, (h, w))
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)


def test_applies_only_where_it_was_measured_to_pay():
    w = torch.zeros(128, 128, 3, 3)
    x = torch.zeros(16, 128, 3, 3)
    assert winograd_map.applies(x, w, (1, 1), (1, 1))
    assert winograd_map.applies(torch.zeros(16, 128, 2, 2), w, (1, 1), (1, 1))
    assert winograd_map.applies(torch.zeros(16, 128, 4, 4), w, (1, 1), (1, 1))
    assert not winograd_map.applies(torch.zeros(16, 128, 6, 6), w, (1, 1), (1, 1))  # map too big: tiles instead
    assert not winograd_map.applies(torch.zeros(16, 128, 1, 1), w, (1, 1), (1, 1))  # 1×1 output saves nothing
    assert not winograd_map.applies(torch.zeros(8, 128, 3, 3), w, (1, 1), (1, 1))  # batch under MIN_BATCH
    assert not winograd_map.applies(x.double(), w.double(), (1, 1), (1, 1))  # float64 keeps oneDNN
    assert not winograd_map.applies(x, w, (2, 2), (1, 1))  # stride
    assert not winograd_map.applies(torch.zeros(16, 64, 3, 3), torch.zeros(128, 64, 3, 3), (1, 1), (1, 1))
    assert not winograd_map.applies(x, torch.zeros(128, 128, 5, 5), (1, 1), (2, 2))  # kernel size


@pytest.mark.parametrize("side", [2, 3, 4])
def test_float32_conv_sequence_takes_it_and_keeps_the_gradients(monkeypatch, side):
    """A 16-sample, 128-channel call on a side×side map in float32 runs the whole-map path:
    output and all three gradients match a float64 reference within float32 rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    x = (torch.rand(16, 128, side, side) < 0.3).float().requires_grad_(True)
    calls: list[int] = []
    original = winograd_map.conv3x3_input_grad
    monkeypatch.setattr(winograd_map, "conv3x3_input_grad", lambda *a: calls.append(1) or original(*a))
    out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    assert calls == [1]
    ref, want = float64_conv_reference(conv, x, g)
    for a, b in [(out, ref)] + list(zip(got, want)):
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()


def test_bptt_gradients_in_float32_match_float64_through_the_whole_map_path(monkeypatch):
    """BPTT over T = 4 steps of a batch of 4 (16 samples per layer call) on 3×3 maps, whose
    second convolution qualifies: float32 gradients are the float64 ones (oneDNN) within
    float32 rounding."""
    torch.manual_seed(0)
    x = (torch.rand(4, 4, 2, 3, 3) < 0.4).float()
    y = torch.randint(0, 5, (4,))
    calls: list[int] = []
    original = winograd_map.conv3x3
    monkeypatch.setattr(winograd_map, "conv3x3", lambda *a: calls.append(1) or original(*a))
    got, want = float32_and_float64_gradients(BPTT(), x, y)
    assert calls
    assert_gradients_close(got, want, 1e-5)
