"""InputConvNormLIF: the first conv, its per-step batch norm and the LIF after them, over a
sequence, keeping nothing but the input (kept anyway) and the carry in.

Proofs: in float32, the same spikes, carry, running statistics and gradients, bit for bit,
as InputConvNorm then LIFSequence (which keep u); in float64, the gradients of T per-step
calls of the modules (autograd through nn.Conv2d, nn.BatchNorm2d and LIF.forward); what is
saved; and the cases left to the layers apart.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leanspike import LIF, Sigmoid
from leanspike import multistep
from leanspike.layers import StepBatchNorm2d
from leanspike.measure import SavedTensorMeter
from leanspike.multistep import InputConvNormLIF, run_sequence

T, B, C_IN, C, H = 4, 3, 2, 5, 6


def _layers(dtype, reset="soft", routes=True, detach_reset=False, affine=True, bias=True):
    torch.manual_seed(0)
    conv = nn.Conv2d(C_IN, C, 3, padding=1, bias=bias).to(dtype)
    bn = StepBatchNorm2d(C, momentum=0.3, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 1.0)
    lif = LIF(decay=0.6, v_threshold=0.8, reset=reset, surrogate=Sigmoid(3.0), detach_reset=detach_reset)
    lif.keep_temporal_routes(routes)
    return nn.Sequential(conv, bn, lif)


def _data(dtype, steps=T, carry=False):
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(steps, B, C_IN, H, H, generator=g) < 0.4).to(dtype)
    c0 = (torch.randn(B, C, H, H, generator=g, dtype=dtype) * 0.5).requires_grad_() if carry else None
    w = torch.randn(steps, B, C, H, H, generator=g, dtype=dtype)
    wc = torch.randn(B, C, H, H, generator=g, dtype=dtype)
    return x, c0, w, wc


def _conv_kernel(unfolded: bool) -> None:
    """The first conv as a product over the unfolded input, or oneDNN's plain conv (the kernel
    for convs with few outputs, ``multistep.SHALLOW_MIN_OUT``; the conftest fixture restores it)."""
    multistep.SHALLOW_MIN_OUT = 0 if unfolded else 10**6
    assert multistep._unfolds(nn.Conv2d(C_IN, C, 3).weight) == unfolded


def _trainable(seq, c0):
    return [p for p in seq.parameters()] + ([c0] if c0 is not None else [])


def _run(seq, x, c0, w, wc, how, monkeypatch=None):
    """Spikes, final carry, running statistics and gradients of one loss over spikes and carry."""
    lif = seq[2]
    lif.carry = c0
    calls = []
    if how == "fused":
        original = InputConvNormLIF.apply
        monkeypatch.setattr(InputConvNormLIF, "apply", lambda *a: calls.append(1) or original(*a))
        spikes = run_sequence(seq, x, kept_input=True)
        assert calls, "the fused function was not taken"
    elif how == "apart":
        monkeypatch.setattr(multistep, "_with_lif", lambda *a: False)
        spikes = run_sequence(seq, x, kept_input=True)
    else:  # T calls of the modules' own forward
        spikes = torch.stack([seq(x[t]) for t in range(x.shape[0])])
    if monkeypatch is not None:
        monkeypatch.undo()
    loss = (spikes * w).sum() + (lif.carry * wc).sum()
    wanted = _trainable(seq, c0)
    grads = [torch.zeros(()) if g is None else g for g in torch.autograd.grad(loss, wanted, allow_unused=True)]
    bn = seq[1]
    return spikes.detach(), lif.carry.detach(), bn.running_mean.clone(), bn.running_var.clone(), grads


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("routes", [True, False])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("unfolded", [True, False], ids=["unfolded-conv", "oneDNN-conv"])
def test_float32_bit_for_bit_the_layers_apart(reset, routes, carry, detach_reset, unfolded, monkeypatch):
    _conv_kernel(unfolded)
    results = []
    for how in ("fused", "apart"):
        seq = _layers(torch.float32, reset, routes, detach_reset)
        x, c0, w, wc = _data(torch.float32, carry=carry)
        results.append(_run(seq, x, c0, w, wc, how, monkeypatch))
    (s1, c1, m1, v1, g1), (s2, c2, m2, v2, g2) = results
    assert s1.sum() > 0 and torch.equal(s1, s2) and torch.equal(c1, c2)
    assert torch.equal(m1, m2) and torch.equal(v1, v2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
@pytest.mark.parametrize("unfolded", [True, False], ids=["unfolded-conv", "oneDNN-conv"])
def test_float64_gradients_of_the_per_step_modules(reset, affine, bias, unfolded, monkeypatch):
    _conv_kernel(unfolded)
    results = []
    for how in ("fused", "modules"):
        seq = _layers(torch.float64, reset, affine=affine, bias=bias)
        x, c0, w, wc = _data(torch.float64, carry=True)
        results.append(_run(seq, x, c0, w, wc, how, monkeypatch if how == "fused" else None))
    (s1, c1, m1, v1, g1), (s2, c2, m2, v2, g2) = results
    assert torch.equal(s1, s2)
    for a, b in [(c1, c2), (m1, m2), (v1, v2)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(g1) == len(g2) >= 2
    for a, b in zip(g1, g2):
        assert b.abs().max() > 0 and (a - b).abs().max() <= 1e-10 * b.abs().max()


def test_keeps_only_the_carry_in():
    """With the input excluded (the engine keeps it whatever the method): the per-step
    statistics, and the carry into a later interval when there is one; no u, no conv output."""
    for carry in (False, True):
        seq = _layers(torch.float32)
        x, c0, w, wc = _data(torch.float32, carry=carry)
        seq[2].carry = None if c0 is None else c0.detach()
        with SavedTensorMeter(exclude=[seq, x]) as meter:
            run_sequence(seq, x, kept_input=True)
        stats = 2 * T * C * 4
        assert meter.peak_bytes == stats + (B * C * H * H * 4 if carry else 0)


@pytest.mark.parametrize("case", ["one step", "broadcast carry", "lif subclass", "not the input"])
def test_cases_left_to_the_layers_apart(case, monkeypatch):
    class MyLIF(LIF):
        pass

    seq = _layers(torch.float32)
    x, _, _, _ = _data(torch.float32, steps=1 if case == "one step" else T)
    if case == "broadcast carry":
        seq[2].carry = torch.zeros(1, C, 1, 1)
    if case == "lif subclass":
        seq[2] = MyLIF(decay=0.6, v_threshold=0.8, surrogate=Sigmoid(3.0))
    monkeypatch.setattr(InputConvNormLIF, "apply", lambda *a: pytest.fail("fused"))
    out = run_sequence(seq, x, kept_input=case != "not the input")
    assert out.shape == (x.shape[0], B, C, H, H)
