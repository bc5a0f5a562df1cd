"""norm_lif: a per-step batch norm then an LIF over a sequence, keeping only the norm's output.

Proofs: the same spikes, carry and running statistics as the step-by-step modules, and
their gradients (float64, autograd through T per-step calls of nn.BatchNorm2d's forward and
LIF.forward); only y (plus the carry in) saved; and the cases it must leave to the two
layers run apart.
"""

from __future__ import annotations

import pytest
import torch

from leanspike import LIF, Sigmoid
from leanspike.layers import StepBatchNorm2d
from leanspike.measure import SavedTensorMeter
from leanspike.multistep import run_sequence
from leanspike.norm_lif import MAX_SHIFT_RATIO, applies

T, B, C, H = 4, 3, 5, 4


def _pair(seed: int = 0, dtype=torch.float64, shift: float = 1.0, reset: str = "soft", routes: bool = True,
          detach_reset: bool = False):
    torch.manual_seed(seed)
    bn = StepBatchNorm2d(C, momentum=0.3).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-shift, shift)
    lif = LIF(decay=0.6, v_threshold=0.8, reset=reset, surrogate=Sigmoid(3.0), detach_reset=detach_reset)
    lif.keep_temporal_routes(routes)
    return bn, lif


def _inputs(dtype=torch.float64, carry: bool = False):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, C, H, H, generator=g, dtype=dtype).requires_grad_()
    c0 = (torch.randn(B, C, H, H, generator=g, dtype=dtype) * 0.5).requires_grad_() if carry else None
    w = torch.randn(T, B, C, H, H, generator=g, dtype=dtype)
    wc = torch.randn(B, C, H, H, generator=g, dtype=dtype)
    return x, c0, w, wc


def _grads(loss, tensors):
    return [torch.zeros(()) if g is None else g
            for g in torch.autograd.grad(loss, tensors, allow_unused=True)]


def _sequence(bn, lif, x, c0, w, wc):
    lif.carry = c0
    assert applies(bn, lif, x)
    spikes = run_sequence(torch.nn.Sequential(bn, lif), x)
    loss = (spikes * w).sum() + (lif.carry * wc).sum()
    return spikes, lif.carry, loss


def _step_by_step(bn, lif, x, c0, w, wc):
    lif.carry = c0
    spikes = torch.stack([lif(bn(x[t])) for t in range(x.shape[0])])
    loss = (spikes * w).sum() + (lif.carry * wc).sum()
    return spikes, lif.carry, loss


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("routes", [True, False])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_same_values_and_gradients_as_the_step_by_step_layers(reset, routes, carry, detach_reset):
    results = []
    for run in (_sequence, _step_by_step):
        bn, lif = _pair(reset=reset, routes=routes, detach_reset=detach_reset)
        x, c0, w, wc = _inputs(carry=carry)
        spikes, last, loss = run(bn, lif, x, c0, w, wc)
        wanted = [x, bn.weight, bn.bias] + ([c0] if carry else [])
        results.append((spikes.detach(), last.detach(), bn.running_mean.clone(), bn.running_var.clone(),
                        bn.num_batches_tracked.clone(), _grads(loss, wanted)))
    (s1, c1, m1, v1, n1, g1), (s2, c2, m2, v2, n2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(n1, n2)
    torch.testing.assert_close(c1, c2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m1, m2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max().clamp_min(1e-300)


def test_float32_gradients_stay_at_rounding_for_the_largest_shift_it_takes():
    """|β| = 8|γ| (the bound) in float32: the same spikes as the step-by-step layers, and
    gradients that differ from theirs by a few roundings, not digits."""
    grads, spikes = [], []
    for run in (_sequence, _step_by_step):
        bn, lif = _pair(dtype=torch.float32, shift=0.0)
        with torch.no_grad():
            bn.bias.copy_(bn.weight * MAX_SHIFT_RATIO * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]))
        x, c0, w, wc = _inputs(dtype=torch.float32)
        s, _, loss = run(bn, lif, x, c0, w, wc)
        spikes.append(s.detach())
        grads.append(_grads(loss, [x, bn.weight, bn.bias]))
    assert torch.equal(*spikes)
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_keeps_only_the_norm_output_and_the_carry_in():
    def saved(fused: bool, carry: bool) -> int:
        bn, lif = _pair()
        x, c0, w, wc = _inputs(carry=carry)
        lif.carry = c0
        with SavedTensorMeter(exclude=[bn, w]) as meter:  # x stands for a conv's output: counted
            seq = torch.nn.Sequential(bn, lif)
            spikes = run_sequence(seq, x) if fused else lif.forward_sequence(bn.forward_sequence(x))
            (spikes * w).sum().backward()
        return meter.peak_bytes

    step = B * C * H * H * 8  # float64 values of one step
    stats = 2 * T * C * 8  # the per-step mean and invstd, one storage (invstd is a view of it)
    assert saved(True, False) == T * step + stats  # y
    assert saved(False, False) == 2 * T * step + stats  # x and u
    assert saved(True, True) == (T + 1) * step + stats  # y and the carry in
    assert saved(False, True) == 2 * T * step + stats  # x and u (the carry is in u)


def test_cases_left_to_the_layers_run_apart():
    bn, lif = _pair()
    x = _inputs()[0]
    assert applies(bn, lif, x)
    assert not applies(bn, lif, x[:1])  # one step: nothing to save
    assert not applies(bn, lif, x.half())  # half precision: the rebuilt input would lose too much
    with torch.no_grad():
        assert not applies(bn, lif, x)  # no graph
    with torch.no_grad():
        bn.bias[2] = bn.weight[2] * (MAX_SHIFT_RATIO * 1.01)
    assert not applies(bn, lif, x)  # one channel's shift too large for its scale
    with torch.no_grad():
        bn.bias.zero_()
        bn.weight[0] = 0.0
    assert not applies(bn, lif, x)  # γ = 0: the input cannot be rebuilt
    bn.weight.data.fill_(1.0)
    bn.eval()
    assert not applies(bn, lif, x)  # running statistics: plain batch norm
    bn.train()
    lif.carry = torch.zeros(C, H, H, dtype=x.dtype)
    assert not applies(bn, lif, x)  # a carry that broadcasts: the layers apart broadcast it
    lif.carry = None
    plain = StepBatchNorm2d(C, affine=False).double()
    assert not applies(plain, lif, x)
    assert not applies(bn, torch.nn.ReLU(), x)


def test_apart_and_together_agree_when_it_falls_back():
    """Above the ratio the pair runs apart: gradients still those of the step-by-step layers."""
    results = []
    for run in (run_sequence, None):
        bn, lif = _pair(shift=0.0)
        with torch.no_grad():
            bn.bias.copy_(bn.weight * 20.0)
        x, _, w, _ = _inputs()
        if run is None:
            spikes = torch.stack([lif(bn(x[t])) for t in range(T)])
        else:
            assert not applies(bn, lif, x)
            spikes = run(torch.nn.Sequential(bn, lif), x)
        results.append(_grads((spikes * w).sum(), [x, bn.weight, bn.bias]))
    for a, b in zip(*results):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()
