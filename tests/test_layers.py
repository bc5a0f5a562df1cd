"""Per-step batch norm, weight standardisation, spike gain and per-sequence dropout."""

from __future__ import annotations

import math

import pytest
import torch

from leanspike.layers import (SPIKE_GAIN, Scale, SequenceDropout, SequenceDropout2d, StepBatchNorm1d,
                              StepBatchNorm2d, WSConv2d, WSLinear, spike_gain, standardize_weight)
from leanspike.state import reset_states


# ------------------------------------------------------------------ per-step batch norm
def _hand_bn(x: torch.Tensor, weight, bias, eps):
    """Normalise one step [B, C, H, W] by hand: per-channel mean and biased variance."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    means, uvars = [], []
    for ch in range(c):
        vals = x[:, ch].reshape(-1)
        n = vals.numel()
        mean = sum(vals.tolist()) / n
        var = sum((v - mean) ** 2 for v in vals.tolist()) / n
        out[:, ch] = (x[:, ch] - mean) / math.sqrt(var + eps) * weight[ch] + bias[ch]
        means.append(mean)
        uvars.append(var * n / (n - 1))
    return out, torch.tensor(means, dtype=x.dtype), torch.tensor(uvars, dtype=x.dtype)


def test_step_batchnorm_uses_each_steps_statistics_and_updates_running_stats(float64):
    torch.manual_seed(0)
    bn = StepBatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    x = torch.randn(3, 4, 3, 2, 2) * torch.tensor([1.0, 3.0, 0.2]).view(1, 1, 3, 1, 1) + 5.0
    run_mean, run_var = torch.zeros(3), torch.ones(3)
    for t in range(3):
        out = bn(x[t])
        expected, mean, uvar = _hand_bn(x[t], bn.weight.detach(), bn.bias.detach(), bn.eps)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        run_mean = 0.9 * run_mean + 0.1 * mean
        run_var = 0.9 * run_var + 0.1 * uvar
        torch.testing.assert_close(bn.running_mean, run_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, run_var, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls,shape", [(StepBatchNorm2d, (4, 5, 3, 2, 3)), (StepBatchNorm1d, (4, 5, 3)),
                                       (StepBatchNorm1d, (3, 2, 3, 4))])
def test_forward_sequence_equals_sequential_calls(float64, cls, shape, momentum):
    torch.manual_seed(1)
    x = torch.randn(*shape) * 2 + torch.arange(shape[0], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))
    seq, one = cls(3, momentum=momentum), cls(3, momentum=momentum)
    with torch.no_grad():
        for bn in (seq, one):
            bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    out_seq = seq.forward_sequence(xa)
    out_one = torch.stack([one(xb[t]) for t in range(shape[0])])
    torch.testing.assert_close(out_seq, out_one, rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(seq, name), getattr(one, name), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out_seq)
    out_seq.backward(g)
    out_one.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(seq.weight.grad, one.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(seq.bias.grad, one.bias.grad, rtol=1e-10, atol=1e-12)
    # eval mode: every step normalised with the running statistics
    seq.eval(), one.eval()
    torch.testing.assert_close(seq.forward_sequence(x), torch.stack([one(x[t]) for t in range(shape[0])]))


def test_forward_sequence_rejects_wrong_channels():
    with pytest.raises(ValueError, match="channels"):
        StepBatchNorm2d(3).forward_sequence(torch.randn(2, 2, 4, 3, 3))


# ------------------------------------------------------------------ weight standardisation
def test_spike_gain_is_the_bernoulli_std_at_threshold_one():
    p = 0.5 * math.erfc(1 / math.sqrt(2))  # P(z > 1), z ~ N(0, 1)
    assert abs(p - 0.158655) < 1e-6
    assert abs(spike_gain(1.0) - 1 / math.sqrt(p * (1 - p))) < 1e-12
    assert round(spike_gain(1.0), 2) == SPIKE_GAIN == 2.74
    # Monte Carlo: standardised weights applied to γ·H(z − 1) give unit output variance
    torch.manual_seed(0)
    w = standardize_weight(torch.randn(64, 512, dtype=torch.float64), None, 0.0)
    s = (torch.randn(20000, 512, dtype=torch.float64) > 1).double() * spike_gain()
    out = s @ w.T
    assert abs(out.mean().item()) < 0.02
    assert abs(out.var().item() - 1) < 0.05
    assert torch.equal(Scale(2.0)(torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize("make", [lambda: WSConv2d(3, 8, 3), lambda: WSLinear(20, 8)])
def test_ws_weight_rows_have_zero_mean_unit_norm(float64, make):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.weight.mul_(7).add_(3)  # the raw weights' scale and offset must not matter
    w = layer.standardized_weight().detach().reshape(8, -1)
    fan_in = w.shape[1]
    raw = layer.weight.detach().reshape(8, -1)
    # independent computation: (W − mean) / sqrt(Σ(W − mean)² + eps)
    centred = raw - raw.mean(1, keepdim=True)
    expected = centred / torch.sqrt((centred ** 2).sum(1, keepdim=True) + layer.eps)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w.mean(1), torch.zeros(8), atol=1e-12, rtol=0)
    # biased variance of each row = 1/fan_in (unit L2 norm), up to eps
    torch.testing.assert_close(w.var(1, unbiased=False) * fan_in, torch.ones(8), atol=1e-5, rtol=0)
    # the gain scales rows; it starts at one and is trainable
    assert torch.all(layer.gain == 1) and layer.gain.requires_grad
    with torch.no_grad():
        layer.gain.fill_(2.0)
    torch.testing.assert_close(layer.standardized_weight().detach().reshape(8, -1), 2 * expected)


def test_ws_forward_uses_the_standardised_weight(float64):
    torch.manual_seed(0)
    conv, lin = WSConv2d(2, 4, 3, padding=1), WSLinear(6, 5)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.standardized_weight(), conv.bias,
                                                                    padding=1))
    y = torch.randn(3, 6)
    torch.testing.assert_close(lin(y), y @ lin.standardized_weight().T + lin.bias)
    lin(y).sum().backward()
    assert lin.weight.grad is not None and lin.gain.grad is not None


# ------------------------------------------------------------------ per-sequence dropout
def test_sequence_dropout_mask_shared_within_and_fresh_across_sequences():
    torch.manual_seed(0)
    drop = SequenceDropout(0.5).train()
    x = torch.ones(4, 50)
    first = [drop(x) for _ in range(3)]
    for out in first[1:]:
        assert torch.equal(out, first[0])
    assert set(first[0].unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1/(1 − p)
    reset_states(drop)
    second = drop(x)
    assert not torch.equal(second, first[0])
    with pytest.raises(ValueError, match="reset_state"):
        drop(torch.ones(3, 50))
    drop.eval()
    assert torch.equal(drop(torch.ones(3, 50)), torch.ones(3, 50))


def test_sequence_dropout_forward_sequence_and_channels():
    torch.manual_seed(0)
    drop = SequenceDropout2d(0.5).train()
    x = torch.ones(3, 4, 6, 2, 2)
    out = drop.forward_sequence(x)
    for t in range(1, 3):
        assert torch.equal(out[t], out[0])
    # whole channels are dropped
    per_channel = out[0].reshape(4, 6, 4)
    assert torch.all(per_channel.amin(-1) == per_channel.amax(-1))
    # a following per-step call continues the same sequence with the same mask
    assert torch.equal(drop(x[0]), out[0])
    with pytest.raises(ValueError):
        SequenceDropout(1.0)
