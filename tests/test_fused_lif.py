"""The fused LIF function against the plain equations: same spikes bit for bit, same gradients.

The reference runs the LIF equations with ordinary tensor operations and a test-local
Heaviside function (H forward, surrogate formula backward), so autograd differentiates
every intermediate; the fused function saves only ``u`` and must agree with it.
"""

import pytest
import torch

from leanspike import LIF
from leanspike.surrogate import Sigmoid, Triangle
from leanspike.measure import SavedTensorMeter

TOL = dict(atol=1e-12, rtol=1e-12)


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.surrogate.derivative(x), None


def reference(currents, carry, decay, th, reset, surrogate, detach_reset):
    spikes = []
    for t in range(currents.shape[0]):
        u = currents[t] if carry is None else carry + currents[t]
        s = _Heaviside.apply(u - th, surrogate)
        r = s.detach() if detach_reset else s
        if reset == "soft":
            carry = decay * (u - th * r)
        elif reset == "hard":
            carry = decay * u * (1 - r)
        else:
            carry = decay * u - th * r
        spikes.append(s)
    return torch.stack(spikes), carry


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", [Triangle(0.8), Sigmoid(4.0)])
@pytest.mark.parametrize("with_carry", [False, True])
def test_sequence_gradients_match_plain_equations(float64, reset, detach_reset, surrogate, with_carry):
    g = torch.Generator().manual_seed(0)
    currents = (torch.rand(5, 3, 4, generator=g) * 1.6).requires_grad_(True)
    carry0 = (torch.rand(3, 4, generator=g) - 0.3).requires_grad_(True) if with_carry else None
    w_spikes, w_carry = torch.randn(5, 3, 4, generator=g), torch.randn(3, 4, generator=g)
    lif = LIF(decay=0.6, v_threshold=0.7, reset=reset, surrogate=surrogate, detach_reset=detach_reset)
    lif.carry = carry0
    spikes = lif.forward_sequence(currents)
    last = lif.carry
    inputs = [currents] + ([carry0] if with_carry else [])
    got = torch.autograd.grad((spikes * w_spikes).sum() + (last * w_carry).sum(), inputs)
    ref_spikes, ref_last = reference(currents, carry0, 0.6, 0.7, reset, surrogate, detach_reset)
    want = torch.autograd.grad((ref_spikes * w_spikes).sum() + (ref_last * w_carry).sum(), inputs)
    assert torch.equal(spikes, ref_spikes) and 0 < spikes.sum() < spikes.numel()
    torch.testing.assert_close(last, ref_last, **TOL)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
def test_forward_values_are_the_equations_bit_for_bit(reset):
    g = torch.Generator().manual_seed(1)
    currents = torch.rand(6, 4, 5, generator=g) * 1.5
    lif = LIF(decay=0.5, reset=reset)
    per_step = torch.stack([lif(currents[t]) for t in range(6)])
    carry_steps = lif.carry
    lif.reset_state()
    whole = lif.forward_sequence(currents)
    ref_spikes, ref_carry = reference(currents, None, 0.5, 1.0, reset, Triangle(1.0), False)
    assert torch.equal(per_step, ref_spikes) and torch.equal(whole, ref_spikes)
    assert torch.equal(carry_steps, ref_carry) and torch.equal(lif.carry, ref_carry)


def test_only_the_potentials_are_saved():
    currents = torch.rand(4, 8, 16, requires_grad=True)
    lif = LIF(decay=0.5)
    with SavedTensorMeter(exclude=[currents]) as meter:
        spikes = lif.forward_sequence(currents)
    assert meter.peak_bytes == currents.numel() * 4  # u, one float per neuron and step
    spikes.sum().backward()
    assert meter.current_bytes == 0


def test_carry_broadcasts_like_the_equations():
    lif = LIF(decay=0.5)
    lif.carry = torch.full((3, 2), 0.6)
    out = lif(torch.full((1, 2), 0.5))  # 0.6 + 0.5 ≥ 1
    assert out.shape == (3, 2) and torch.all(out == 1)
