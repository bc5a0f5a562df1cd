"""Gradient similarity (SLTT Fig. 3) against a hand-unrolled float64 network.

The reference below writes the LIF (soft reset, triangle surrogate) and the per-step
cross-entropy out with plain tensor operations and its own spike function; the
spatial-only gradient detaches the carried state at every step. It shares no code with
leanspike's neuron, engine or methods.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import LIF, MeanOutputCE, PerStepCE
from leanspike.analysis import cosine, gradient_similarity
from leanspike.layers import SequenceDropout

V_TH = 1.0


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (V_TH - x.abs()).clamp_min(0) / (V_TH * V_TH)  # triangle, width V_th


def reference(w1, b1, w2, b2, x, y, decay, spatial_only):
    """Linear → LIF → Linear, per-step CE / T; returns the four gradients."""
    params = [p.detach().clone().requires_grad_(True) for p in (w1, b1, w2, b2)]
    W1, B1, W2, B2 = params
    T = x.shape[0]
    carry = torch.zeros(x.shape[1], W1.shape[0], dtype=torch.float64)
    loss = 0.0
    for t in range(T):
        if spatial_only:
            carry = carry.detach()
        u = carry + x[t] @ W1.T + B1
        s = _Spike.apply(u - V_TH)
        carry = decay * (u - V_TH * s)
        out = s @ W2.T + B2
        loss = loss + F.cross_entropy(out, y) / T
    grads = torch.autograd.grad(loss, params)
    return grads


def net(decay, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), LIF(decay=decay, v_threshold=V_TH), nn.Linear(12, 4)).double()


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_similarity_matches_a_direct_computation(decay):
    model = net(decay)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 8, 6, generator=g, dtype=torch.float64) * 2.5
    y = torch.randint(0, 4, (8,), generator=g)
    sim = gradient_similarity(model, x, y, PerStepCE())
    w1, b1, w2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    full = reference(w1, b1, w2, b2, x, y, decay, spatial_only=False)
    spatial = reference(w1, b1, w2, b2, x, y, decay, spatial_only=True)
    expected = [cosine(torch.cat([full[0].flatten(), full[1]]), torch.cat([spatial[0].flatten(), spatial[1]])),
                cosine(torch.cat([full[2].flatten(), full[3]]), torch.cat([spatial[2].flatten(), spatial[3]]))]
    assert sim.layers["0"] == pytest.approx(expected[0], abs=1e-12)
    assert sim.layers["2"] == pytest.approx(expected[1], abs=1e-12)
    assert sim.mean == pytest.approx(sum(expected) / 2, abs=1e-12)
    assert sim.loss_bptt == pytest.approx(sim.loss_sltt, rel=1e-12)
    if decay == 0.0:  # no temporal route at all: the two gradients are the same
        assert sim.mean == pytest.approx(1.0, abs=1e-12)
    else:  # the hidden layer loses its temporal routes; the readout has none to lose
        assert expected[0] < 1 - 1e-6
        assert sim.layers["2"] == pytest.approx(1.0, abs=1e-12)
        assert sim.mean < 1 - 1e-7


def test_analysis_replays_dropout_and_restores_buffers(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), LIF(tau=2.0), SequenceDropout(0.5),
                          nn.Linear(12, 4))
    before = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.rand(4, 8, 6, dtype=torch.float64) * 3
    y = torch.randint(0, 4, (8,))
    rng = torch.random.get_rng_state()
    sim = gradient_similarity(model, x, y)  # raises if the two runs drew different masks
    assert sim.loss_bptt == pytest.approx(sim.loss_sltt, rel=1e-12)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert set(sim.layers) == {"0", "1", "4"}


def test_loss_must_be_per_step():
    model = net(0.5)
    x, y = torch.rand(3, 2, 6, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="per-step loss"):
        gradient_similarity(model, x, y, MeanOutputCE())


def test_cosine_edge_cases():
    assert cosine(torch.zeros(3), torch.zeros(3)) == 1.0
    assert cosine(torch.zeros(3), torch.ones(3)) == 0.0
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.0
