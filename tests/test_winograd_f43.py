"""F(4×4, 3×3) convolutions (leanspike.winograd_f43): forward, input gradient and weight gradient
against PyTorch's convolution and its autograd in float64; tile sums across calls; the rule
that picks it; and the float32 path the engine takes against a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import SLTT, BPTT, multistep, winograd, winograd_f43
from leanspike.multistep import Conv2dSequence

from conftest import assert_float32_gradients_match_float64, count_calls, float64_conv_reference


@pytest.mark.parametrize("shape", [(2, 3, 4, 12, 12), (2, 3, 4, 7, 9), (1, 2, 5, 6, 6), (3, 5, 2, 13, 24)])
@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 2), (1, 0)])
def test_forward_and_both_gradients_equal_the_convolution(shape, padding):
    """Any map size (whole 4×4 tiles or not) and padding of at most 2: F.conv2d and its
    autograd's input and weight gradients, in float64 to 1e-12."""
    torch.manual_seed(0)
    n, c, o, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, 1, padding)
    g = torch.randn_like(ref)
    want_x, want_w = torch.autograd.grad(ref, [x, weight], g)
    tol = dict(rtol=1e-12, atol=1e-11)
    got = winograd_f43.conv3x3(x.detach(), winograd_f43.kernel_transform(weight), bias, padding)
    torch.testing.assert_close(got, ref.detach(), **tol)
    torch.testing.assert_close(
        winograd_f43.conv3x3_input_grad(g, winograd_f43.flipped_kernel_transform(weight), padding), want_x, **tol)
    torch.testing.assert_close(winograd_f43.conv3x3_weight_grad(g, x.detach(), padding), want_w, **tol)


def test_parts_and_sums_across_calls_are_the_whole(monkeypatch):
    """Calls over parts of the batch (bounded temporaries) give the whole call's values, and
    weight-gradient tiles added into one sum across calls give the gradient of all of them."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 9, 10, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    g = torch.randn(7, 4, 9, 10, dtype=torch.float64)
    whole_y = winograd_f43.conv3x3(x, winograd_f43.kernel_transform(weight), None, (1, 1))
    whole_w = winograd_f43.conv3x3_weight_grad(g, x, (1, 1))
    monkeypatch.setattr(winograd, "TRANSFORM_PART_VALUES", 2 * 36 * 3 * 3 * 4)  # two samples a part
    monkeypatch.setattr(winograd, "PART_VALUES", 2 * 36 * 3 * 3 * 4)
    torch.testing.assert_close(winograd_f43.conv3x3(x, winograd_f43.kernel_transform(weight), None, (1, 1)),
                               whole_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd_f43.conv3x3_weight_grad(g, x, (1, 1)), whole_w, rtol=1e-12, atol=1e-12)
    total = winograd_f43.weight_grad_tiles(g[:3], x[:3], (1, 1))
    winograd_f43.weight_grad_tiles(g[3:], x[3:], (1, 1), into=total)
    torch.testing.assert_close(winograd_f43.weight_grad_from_tiles(total), whole_w, rtol=1e-12, atol=1e-12)


def test_applies_and_the_rule_follow_what_was_measured(monkeypatch):
    w = torch.zeros(64, 64, 3, 3)
    x = torch.zeros(8, 64, 12, 12)
    assert winograd_f43.applies(x, w, (1, 1), (1, 1))
    assert not winograd_f43.applies(x.double(), w.double(), (1, 1), (1, 1))  # float64 keeps oneDNN
    assert not winograd_f43.applies(x, w, (2, 2), (1, 1))  # stride
    assert not winograd_f43.applies(torch.zeros(8, 32, 12, 12), torch.zeros(64, 32, 3, 3), (1, 1), (1, 1))
    assert not winograd_f43.applies(torch.zeros(8, 64, 6, 6), w, (1, 1), (1, 1))  # 6×6: F(2×2, 3×3)'s
    monkeypatch.setattr(multistep, "WINOGRAD43", True)
    monkeypatch.setattr(multistep, "WINOGRAD_MAX_BATCH", 16)
    assert multistep._winograd_f43(torch.zeros(48, 64, 12, 12), w, (1, 1), (1, 1))  # 144 pixels: any batch
    assert multistep._winograd_f43(torch.zeros(8, 64, 24, 24), w, (1, 1), (1, 1))  # bigger maps: small batches
    assert not multistep._winograd_f43(torch.zeros(48, 64, 24, 24), w, (1, 1), (1, 1))
    assert multistep.weight_grad_kernel(torch.zeros(8, 64, 12, 12), x, w, (1, 1), (1, 1)) == "winograd43"
    monkeypatch.setattr(multistep, "WINOGRAD43", False)  # other CPUs: not measured there, not taken
    assert not multistep._winograd_f43(x, w, (1, 1), (1, 1))


@pytest.mark.parametrize("forward", [False, True])
def test_float32_conv_sequence_takes_it_and_keeps_the_gradients(monkeypatch, forward):
    """A batch-8, 64-channel 12×12 call in float32 runs its input and weight gradients as
    F(4×4, 3×3) (the forward too only with WINOGRAD43_FORWARD: its rounding could flip spikes),
    the flipped kernels made once per KernelCache: output and gradients within 1e-4 of the largest
    value of a float64 reference (it rounds ~20× worse than a direct convolution)."""
    monkeypatch.setattr(multistep, "WINOGRAD43", True)
    monkeypatch.setattr(multistep, "WINOGRAD43_FORWARD", forward)
    forwards = []
    real_forward = winograd_f43.conv3x3
    monkeypatch.setattr(winograd_f43, "conv3x3", lambda *a: forwards.append(1) or real_forward(*a))
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 96, 3, padding=1)
    made = []
    real = winograd_f43.flipped_kernel_transform
    monkeypatch.setattr(winograd_f43, "flipped_kernel_transform", lambda w: made.append(1) or real(w))
    with winograd.KernelCache():
        for _ in range(2):
            x = (torch.rand(8, 64, 12, 12) < 0.3).float().requires_grad_(True)
            out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
            g = torch.randn_like(out)
            got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
            ref, want = float64_conv_reference(conv, x, g)
            for a, b in [(out, ref)] + list(zip(got, want)):
                assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max()
    assert len(made) == 1  # one flipped transform for both calls: the weight did not change
    assert len(forwards) == (2 if forward else 0)


@pytest.mark.parametrize("method", [SLTT, BPTT])
def test_engine_gradients_in_float32_match_float64_through_f43(monkeypatch, method):
    """SLTT (8 one-step calls summed in the tile domain) and BPTT (one 16-sample call) on a net
    whose second convolution takes F(4×4, 3×3): float32 gradients are the float64 ones (oneDNN)
    within 1e-4 of each tensor's largest value. No neuron follows that convolution, so rounding
    cannot flip a spike."""
    monkeypatch.setattr(multistep, "WINOGRAD43", True)
    torch.manual_seed(0)
    x = (torch.rand(2, 8, 2, 12, 12) < 0.4).float()
    y = torch.randint(0, 5, (8,))
    calls = count_calls(monkeypatch, winograd_f43, "conv3x3_input_grad")
    assert_float32_gradients_match_float64(method(), 64, x, y, rtol=1e-4)  # float64 takes no Winograd
    assert calls  # the 64 → 64 convolution's input gradient ran as F(4×4, 3×3)
