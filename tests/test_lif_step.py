"""LIFStep: one LIF step that keeps its spikes as bits and rebuilds ``u`` from the carry.

Proofs: forward values bit for bit those of the plain equations; gradients (float64) equal to
autograd through the plain equations (test_fused_lif's reference) for every soft reset, with
and without a carry in, with the carry out used downstream (temporal routes) or not; bytes kept
for backward = the packed spikes only; an in-place change of the carry is caught; hard reset
and λ = 0 keep ``u`` (LIFSequence); and the engine takes it only for one-step graph intervals,
where SLTT's and SLTT-K's gradients are those of the path that keeps ``u``.
"""

import contextlib

import pytest
import torch
from torch import nn

from leanspike import LIF, SLTT, SLTTK, BPTT, engine
from leanspike.measure import SavedTensorMeter
from leanspike.neuron import LIFSequence, LIFStep, backward_reads_carry
from leanspike.surrogate import Sigmoid, Triangle
from test_fused_lif import reference

TOL = dict(atol=1e-12, rtol=1e-12)


def _step(lif, current, carry):
    lif.carry = carry
    with backward_reads_carry():
        spikes = lif.forward_sequence(current.unsqueeze(0))[0]
    return spikes, lif.carry


@pytest.mark.parametrize("reset", ["soft", "soft-unleaked"])
@pytest.mark.parametrize("decay", [0.5, 0.3])
@pytest.mark.parametrize("surrogate", [Triangle(0.8), Sigmoid(4.0)])
@pytest.mark.parametrize("with_carry", [False, True])
@pytest.mark.parametrize("routes,detach_reset", [(False, False), (True, False), (True, True)])
def test_gradients_match_plain_equations(float64, reset, decay, surrogate, with_carry, routes, detach_reset):
    g = torch.Generator().manual_seed(0)
    current = (torch.rand(3, 4, 5, generator=g) * 1.6).requires_grad_(True)
    carry0 = (torch.rand(3, 4, 5, generator=g) - 0.3).requires_grad_(True) if with_carry else None
    w_spikes, w_carry = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    lif = LIF(decay=decay, v_threshold=0.7, reset=reset, surrogate=surrogate, detach_reset=detach_reset)
    lif.keep_temporal_routes(routes)
    spikes, last = _step(lif, current, carry0)
    assert type(last.grad_fn).__name__ == "LIFStepBackward"
    # with routes, the carry out feeds on (as the next step would use it) before backward
    loss = (spikes * w_spikes).sum() + ((last * w_carry).sum() if routes else 0)
    inputs = [current] + ([carry0] if with_carry else [])
    got = torch.autograd.grad(loss, inputs, allow_unused=True)

    ref_spikes, ref_last = reference(current.unsqueeze(0), carry0, decay, 0.7, reset, surrogate, detach_reset)
    assert torch.equal(spikes, ref_spikes[0]) and torch.equal(last, ref_last)
    if routes:
        ref_loss = (ref_spikes[0] * w_spikes).sum() + (ref_last * w_carry).sum()
        want = torch.autograd.grad(ref_loss, inputs)
    else:  # SLTT: only the step's own route, dL/dI = dL/ds · h, and nothing for the carry in
        want = torch.autograd.grad((ref_spikes[0] * w_spikes).sum(), [current])
        if with_carry:
            assert got[1] is None
            got = got[:1]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_forward_and_gradient_equal_lif_sequence_float32():
    """λ a power of two: the rebuilt u − V_th is the forward's bit for bit, so the gradient is too."""
    g = torch.Generator().manual_seed(1)
    current = (torch.randn(8, 16, 6, 6, generator=g) + 0.8).requires_grad_(True)
    carry = torch.randn(8, 16, 6, 6, generator=g) * 0.5
    w = torch.randn(8, 16, 6, 6, generator=g)
    dyn = LIF(decay=0.5, surrogate="sigmoid").dynamics()._replace(temporal_routes=False)
    out = []
    for fn in (LIFSequence, LIFStep):
        spikes, last = fn.apply(current.unsqueeze(0), carry, dyn)
        (grad,) = torch.autograd.grad((spikes[0] * w).sum(), [current])
        out.append((spikes, last, grad))
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_keeps_only_the_spikes_as_bits():
    lif = LIF(decay=0.5)
    current = torch.randn(4, 8, 5, 5, requires_grad=True)  # 800 neurons: 100 bytes
    with SavedTensorMeter() as meter:
        spikes, _ = _step(lif, current, torch.randn(4, 8, 5, 5))
    assert meter.peak_bytes == 800 // 8
    spikes.sum().backward()
    assert meter.current_bytes == 0


def test_in_place_change_of_the_carry_is_caught():
    lif = LIF(decay=0.5)
    current = torch.randn(3, 4, requires_grad=True)
    spikes, last = _step(lif, current, None)
    last.add_(1.0)
    with pytest.raises(RuntimeError, match="carry was modified in place"):
        spikes.sum().backward()


@pytest.mark.parametrize("kwargs", [dict(decay=0.5, reset="hard"), dict(tau=1.0)])
def test_hard_reset_and_no_leak_keep_u(kwargs):
    """A hard reset's carry is 0 where the neuron fired and λ = 0 leaves no carry: u is kept."""
    lif = LIF(**kwargs)
    spikes, last = _step(lif, torch.randn(3, 4, requires_grad=True), None)
    assert type(last.grad_fn).__name__ == "LIFSequenceBackward"


def test_outside_the_context_u_is_kept():
    lif = LIF(decay=0.5)
    lif.carry = None
    spikes = lif.forward_sequence(torch.randn(1, 3, 4, requires_grad=True))
    assert type(lif.carry.grad_fn).__name__ == "LIFSequenceBackward"


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), LIF(decay=0.3, surrogate="sigmoid"),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5), LIF(decay=0.3, reset="soft-unleaked"),
                         nn.Linear(5, 3)).double()


@pytest.mark.parametrize("method", [SLTT(), SLTTK(2, generator=torch.Generator().manual_seed(3))])
def test_engine_gradients_equal_the_path_that_keeps_u(float64, monkeypatch, method):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 2, 6, 6, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, 3, (3,), generator=g)
    taken = []
    real = LIFStep.apply

    def counting(*args):
        taken.append(1)
        return real(*args)

    monkeypatch.setattr(LIFStep, "apply", counting)
    if isinstance(method, SLTTK):
        method.generator.manual_seed(3)
    new = method.compute_gradients(_net(), x, y)
    assert taken  # the engine took the one-step function
    monkeypatch.setattr(engine, "backward_reads_carry", lambda enabled=True: contextlib.nullcontext())
    if isinstance(method, SLTTK):
        method.generator.manual_seed(3)
    count = len(taken)
    old = method.compute_gradients(_net(), x, y)
    assert len(taken) == count  # ... and without the context it keeps u
    for name in new:
        torch.testing.assert_close(new[name], old[name], atol=1e-12, rtol=1e-10)


def test_bptt_keeps_u(monkeypatch):
    taken = []
    real = LIFStep.apply
    monkeypatch.setattr(LIFStep, "apply", lambda *a: taken.append(1) or real(*a))
    x = torch.rand(4, 3, 2, 6, 6)
    BPTT().compute_gradients(_net().float(), x, torch.tensor([0, 1, 2]))
    assert not taken
