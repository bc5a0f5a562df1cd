"""The Triton LIF kernels against the tensor path: forward bit for bit, backward to rounding.

The tensor path is proven against the plain equations in test_fused_lif.py, so equality
here carries that proof to the kernels. Runs on a CUDA device when Triton is installed,
and on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``); skipped otherwise.
"""

import os

import pytest
import torch

from leanspike import neuron
from leanspike.neuron import LIF, Dynamics
from leanspike.surrogate import Atan, Rectangle, Sigmoid, Triangle

triton = pytest.importorskip("triton")
from leanspike import lif_triton  # noqa: E402

if torch.cuda.is_available():
    DEVICE = torch.device("cuda")
elif os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = torch.device("cpu")
else:
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture
def tensor_path(monkeypatch):
    """neuron's functions with the kernels switched off."""
    monkeypatch.setattr(neuron, "USE_TRITON", False)
    return neuron


def _currents(dtype, steps=7, shape=(5, 300), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, *shape, generator=g, dtype=torch.float64) * 1.6 - 0.2).to(dtype).to(DEVICE)


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("with_carry", [False, True])
def test_forward_is_the_tensor_path_bit_for_bit(tensor_path, reset, dtype, with_carry):
    if dtype == torch.float16 and DEVICE.type == "cpu":
        pytest.skip("the CPU rounds half-precision scalars unlike CUDA, which the kernel follows")
    currents = _currents(dtype)
    carry = (_currents(dtype, steps=1, seed=1)[0] - 0.3) if with_carry else None
    dyn = Dynamics(1 - 1 / 1.1, 0.7, reset, Triangle(0.7), False)  # λ not exact in binary
    want_u = torch.empty_like(currents)
    want_s, want_c = tensor_path.lif_forward(currents, carry, dyn, want_u)
    got_u = torch.empty_like(currents)
    got_s, got_c = lif_triton.lif_forward(currents, carry, dyn.decay, dyn.v_threshold, reset, got_u)
    assert 0 < want_s.sum() < want_s.numel()
    assert torch.equal(got_s, want_s) and torch.equal(got_u, want_u) and torch.equal(got_c, want_c)
    no_u_s, no_u_c = lif_triton.lif_forward(currents, carry, dyn.decay, dyn.v_threshold, reset)
    assert torch.equal(no_u_s, want_s) and torch.equal(no_u_c, want_c)


class _Shifted(Triangle):
    """A surrogate the kernel does not know: its derivative comes from the tensor path."""

    def derivative(self, x):
        return super().derivative(x - 0.1)

    def derivative_(self, x):
        return super().derivative_(x.sub_(0.1))


SURROGATES = [Rectangle(0.9), Triangle(0.7), Sigmoid(4.0), Atan(2.0), _Shifted(0.8)]


@pytest.mark.parametrize("reset,routes", [("soft", True), ("soft-unleaked", True), ("soft", False),
                                          ("hard", False), ("soft-unleaked", False)])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("grads", ["both", "spikes", "carry"])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__)
def test_backward_matches_the_tensor_path(tensor_path, reset, routes, detach_reset, grads, surrogate):
    if grads == "carry" and not routes:
        pytest.skip("without temporal routes the carry's gradient goes nowhere")
    currents = _currents(torch.float64)
    dyn = Dynamics(1 - 1 / 1.1, 0.7, reset, surrogate, detach_reset, routes)
    potentials = torch.empty_like(currents)
    tensor_path.lif_forward(currents, None, dyn, potentials)
    g = torch.Generator().manual_seed(2)
    grad_spikes = torch.randn(currents.shape, generator=g, dtype=torch.float64).to(DEVICE) \
        if grads != "carry" else None
    grad_carry = torch.randn(currents.shape[1:], generator=g, dtype=torch.float64).to(DEVICE) \
        if grads != "spikes" else None
    want = tensor_path.lif_backward(potentials, grad_spikes, grad_carry, dyn)
    got = lif_triton.lif_backward(potentials, grad_spikes, grad_carry, dyn)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, atol=1e-12 * float(want.abs().max()), rtol=0)


def test_hard_reset_with_routes_is_refused():
    dyn = Dynamics(0.5, 1.0, "hard", Triangle(1.0), False, True)
    u = _currents(torch.float64)
    with pytest.raises(ValueError, match="hard reset"):
        lif_triton.lif_backward(u, u, None, dyn)


def test_constants_split_exactly():
    for value in (1 - 1 / 1.1, 0.7, 0.42, 1e-7, 3.0):
        assert sum(map(float, lif_triton.split_constant(value))) == value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dispatch happens on CUDA tensors only")
def test_lif_layer_runs_the_kernels_on_cuda(monkeypatch):
    calls = []
    for name in ("lif_forward", "lif_backward"):
        original = getattr(lif_triton, name)
        monkeypatch.setattr(lif_triton, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    currents = _currents(torch.float64).requires_grad_(True)
    lif = LIF(decay=0.5, surrogate=Sigmoid(4.0))
    lif.forward_sequence(currents).sum().backward()
    assert calls == ["lif_forward", "lif_backward"]
    grad = currents.grad.clone()
    monkeypatch.setattr(neuron, "USE_TRITON", False)
    currents.grad = None
    lif.reset_state()
    lif.forward_sequence(currents).sum().backward()
    torch.testing.assert_close(grad, currents.grad, atol=1e-12, rtol=0)
