"""lif_compiled: the LIF loops and the per-step batch norm + LIF pairs compiled by torch.compile.

Proofs: the compiled forward gives the tensor path's spikes, potentials and carry bit for bit;
the compiled backward, NormLIF and InputConvNormLIF give the gradients of T per-step calls of
the plain modules (float64, autograd through nn.BatchNorm2d, nn.Conv2d and LIF.forward) and
their running statistics; BPTT on a small CNN gives the step-by-step path's gradients; a
failing compiler falls back to the same functions uncompiled; enabling needs a compiler.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leanspike import BPTT, LIF, Sigmoid, compiled_lif, lif_compiled, multistep, neuron
from leanspike.errors import UserError
from leanspike.layers import SequenceDropout, StepBatchNorm2d
from leanspike.multistep import InputConvNormLIF, run_sequence
from leanspike.neuron import Dynamics
from leanspike.norm_lif import NormLIF

pytestmark = pytest.mark.skipif(neuron._cpp_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler")

T, B, C, H = 3, 2, 3, 4


@pytest.fixture
def compiled():
    with compiled_lif(True):
        yield
    assert not lif_compiled._failed, lif_compiled._failed  # nothing fell back unnoticed


def _dyn(reset="soft", routes=True, dtype_surrogate=Sigmoid(3.0)):
    return Dynamics(0.6, 0.8, reset, dtype_surrogate, False, routes)


def _currents(dtype, steps=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, B, C, H, H, generator=g, dtype=dtype) + 0.4


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("carry", [False, True])
def test_forward_is_the_tensor_path_bit_for_bit(reset, carry, compiled):
    x = _currents(torch.float32)
    c0 = _currents(torch.float32, 1, seed=1)[0] if carry else None
    dyn = _dyn(reset)
    spikes, u, last = lif_compiled.lif_forward(x, c0, dyn.decay, dyn.v_threshold, reset, want_potentials=True)
    with compiled_lif(False):
        _, u_ref, last_ref = neuron.lif_potentials(x, c0, dyn)
        spikes_ref, _ = neuron.lif_forward(x, c0, dyn)
    assert spikes.sum() > 0 and torch.equal(spikes, spikes_ref)
    assert torch.equal(u, u_ref) and torch.equal(last, last_ref)


def test_long_intervals_run_in_pieces(compiled, monkeypatch):
    monkeypatch.setattr(lif_compiled, "MAX_STEPS", 2)
    x, dyn = _currents(torch.float64, steps=5), _dyn()
    grad_spikes, grad_last = _currents(torch.float64, 5, seed=2), _currents(torch.float64, 1, seed=3)[0]
    spikes, u, last = lif_compiled.lif_forward(x, None, dyn.decay, dyn.v_threshold, "soft", want_potentials=True)
    grad = lif_compiled.lif_backward(u, grad_spikes, grad_last, dyn)
    with compiled_lif(False):
        _, u_ref, last_ref = neuron.lif_potentials(x, None, dyn)
        grad_ref = neuron.lif_backward(u_ref, grad_spikes, grad_last, dyn)
    assert torch.equal(u, u_ref) and torch.equal(last, last_ref) and torch.equal(spikes, (u_ref >= 0.8).double())
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset,routes", [("soft", True), ("soft-unleaked", True), ("soft", False), ("hard", False)])
def test_backward_is_the_equations(reset, routes, compiled):
    x, dyn = _currents(torch.float64), _dyn(reset, routes)
    grad_spikes, grad_last = _currents(torch.float64, seed=2), _currents(torch.float64, 1, seed=3)[0]
    with compiled_lif(False):
        _, u, _ = neuron.lif_potentials(x, None, dyn)
        grad_ref = neuron.lif_backward(u.clone(), grad_spikes, grad_last, dyn)
    grad = neuron.lif_backward(u, grad_spikes, grad_last, dyn)
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


def _norm_lif(reset, routes, dtype=torch.float64):
    torch.manual_seed(0)
    bn = StepBatchNorm2d(C, momentum=0.3).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 1.0)
    lif = LIF(decay=0.6, v_threshold=0.8, reset=reset, surrogate=Sigmoid(3.0))
    lif.keep_temporal_routes(routes)
    return bn, lif


def _outcome(modules, x, c0, run):
    """Spikes, last carry, running statistics, step count and the gradients (x or conv weight,
    norm weight and bias, carry in) of one loss over the spikes and the last carry."""
    lif = modules[-1]
    lif.carry = c0
    spikes = run()
    g = torch.Generator().manual_seed(9)
    loss = (spikes * torch.randn(spikes.shape, generator=g, dtype=x.dtype)).sum() \
        + (lif.carry * torch.randn(lif.carry.shape, generator=g, dtype=x.dtype)).sum()
    bn = modules[-2]
    first = x if x.requires_grad else modules[0].weight
    wanted = [first, bn.weight, bn.bias, c0]
    grads = [torch.zeros_like(t) if g is None else g  # no routes: the carry in gets none
             for t, g in zip(wanted, torch.autograd.grad(loss, wanted, allow_unused=True))]
    return (spikes.detach(), lif.carry.detach(), bn.running_mean.clone(), bn.running_var.clone(),
            bn.num_batches_tracked.clone(), grads)


def _same(compiled_run, reference):
    (s1, c1, m1, v1, n1, g1), (s2, c2, m2, v2, n2, g2) = compiled_run, reference
    assert s2.sum() > 0 and torch.equal(s1, s2) and torch.equal(n1, n2)
    for a, b in [(c1, c2), (m1, m2), (v1, v2)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert all(b.abs().max() > 0 for b in g2[:3])
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()


@pytest.mark.parametrize("reset,routes,dropout", [("soft", True, False), ("soft", False, False), ("hard", True, False),
                                                   ("soft", True, True), ("hard", True, True)])
def test_norm_lif_gives_the_per_step_modules_gradients(reset, routes, dropout, compiled, monkeypatch):
    """With a dropout after the LIF, the compiled loop applies its mask (the same mask: the same
    draw from the same generator state), in the compiled backward or, for a hard reset with
    routes, in the tensor path's."""
    calls = []
    forward = lif_compiled.norm_lif_forward
    monkeypatch.setattr(lif_compiled, "norm_lif_forward",
                        lambda *a, **k: calls.append(k.get("mask") is not None) or forward(*a, **k))
    results = []
    for how in ("compiled", "modules"):
        bn, lif = _norm_lif(reset, routes)
        drop = SequenceDropout(0.4) if dropout else nn.Identity()
        x = _currents(torch.float64).requires_grad_()
        c0 = (_currents(torch.float64, 1, seed=1)[0] * 0.5).requires_grad_()
        torch.manual_seed(11)
        if how == "compiled":
            results.append(_outcome([bn, lif], x, c0, lambda: run_sequence(nn.Sequential(bn, lif, drop), x)))
        else:
            with compiled_lif(False):
                results.append(_outcome([bn, lif], x, c0,
                                        lambda: torch.stack([drop(lif(bn(x[t]))) for t in range(T)])))
    assert calls == [dropout], "NormLIF did not take the compiled loop (with the mask)"
    _same(*results)


@pytest.mark.parametrize("reset,parts", [("soft", 1), ("hard", 1), ("soft", C)])
def test_input_conv_norm_lif_gives_the_per_step_modules_gradients(reset, parts, compiled, monkeypatch):
    """Also in parts of the channels (one each: how a big first layer bounds its memory)."""
    if parts > 1:
        monkeypatch.setattr(multistep, "COMPILED_PART_VALUES", 1)
    calls = []
    backward = lif_compiled.norm_lif_backward
    monkeypatch.setattr(lif_compiled, "norm_lif_backward",
                        lambda *a, mean=None, **k: calls.append(mean is not None) or backward(*a, mean=mean, **k))
    results = []
    for how in ("compiled", "modules"):
        torch.manual_seed(0)
        conv = nn.Conv2d(2, C, 3, padding=1).double()
        bn, lif = _norm_lif(reset, True)
        seq = nn.Sequential(conv, bn, lif)
        x = (torch.rand(T, B, 2, H, H, generator=torch.Generator().manual_seed(4)) < 0.5).double()
        c0 = (_currents(torch.float64, 1, seed=1)[0] * 0.5).requires_grad_()
        if how == "compiled":
            assert InputConvNormLIF is not None and multistep._with_lif(conv, lif, x)
            results.append(_outcome(seq, x, c0, lambda: run_sequence(seq, x, kept_input=True)))
        else:
            with compiled_lif(False):
                results.append(_outcome(seq, x, c0, lambda: torch.stack([seq(x[t]) for t in range(T)])))
    assert calls == ([True] * parts if reset == "soft" else []), "the compiled backward: soft resets (or no routes)"
    _same(*results)


def test_bptt_gradients_are_the_step_by_step_paths(compiled, monkeypatch):
    """A small CNN (input conv + norm + LIF + dropout, pooling, conv + norm + LIF + dropout, linear)
    under BPTT: the compiled loops, which apply the dropout masks themselves, give the gradients
    of the plain step-by-step autograd path with the same masks."""
    def model():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), StepBatchNorm2d(4), LIF(decay=0.5, surrogate=Sigmoid(4.0)),
                            SequenceDropout(0.3), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1), StepBatchNorm2d(6),
                            LIF(decay=0.5, surrogate=Sigmoid(4.0)), SequenceDropout(0.3), nn.Flatten(),
                            nn.Linear(6 * 4, 3)).double()
        with torch.no_grad():
            for m in net:
                if isinstance(m, StepBatchNorm2d):
                    m.weight.uniform_(0.8, 1.6)
        return net

    x = (torch.rand(4, 5, 2, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).double() * 3
    y = torch.tensor([0, 1, 2, 1, 0])
    calls = []
    forward = lif_compiled.norm_lif_forward
    monkeypatch.setattr(lif_compiled, "norm_lif_forward",
                        lambda *a, **k: calls.append(k.get("mask") is not None) or forward(*a, **k))
    net = model()
    torch.manual_seed(7)  # the dropout masks
    grads = BPTT().compute_gradients(net, x, y)
    assert calls == [True, True]  # both pairs took the compiled loop, with their dropout masks
    monkeypatch.setattr(multistep, "ENABLED", False)
    with compiled_lif(False):
        ref_net = model()
        torch.manual_seed(7)
        ref = BPTT().compute_gradients(ref_net, x, y)
    assert grads.keys() == ref.keys()
    assert all(ref[name].abs().max() > 0 for name in ref if name.endswith("weight"))
    scale = max(g.abs().max().item() for g in ref.values())  # conv biases before a norm get ~0: absolute bound
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-9, atol=1e-12 * scale)


def test_a_failing_compiler_falls_back_to_the_same_functions(monkeypatch):
    def broken(fn, key):
        def call(*args):
            raise RuntimeError("no compiler here\nsecond line")
        return call

    monkeypatch.setattr(lif_compiled, "_compiled", broken)
    monkeypatch.setattr(lif_compiled, "_failed", [])
    x, dyn = _currents(torch.float32), _dyn()
    with pytest.warns(RuntimeWarning, match="compiling the LIF loops failed .RuntimeError: no compiler here.; running"):
        spikes, u, last = lif_compiled.lif_forward(x, None, dyn.decay, dyn.v_threshold, "soft", want_potentials=True)
    _, u_ref, last_ref = neuron.lif_potentials(x, None, dyn)
    assert torch.equal(u, u_ref) and torch.equal(last, last_ref)


def test_enabling_needs_a_compiler(monkeypatch):
    monkeypatch.setattr(neuron, "_cpp_compiler", lambda: None)
    with pytest.raises(UserError, match="compile_lif needs a C\\+\\+ compiler"):
        neuron.compile_lif(True)
    assert not neuron.compiled_lif_enabled()
    assert neuron.compile_lif(False) is False  # turning it off needs nothing


def test_the_config_decides_for_a_training_run(monkeypatch):
    from leanspike import trainer
    from leanspike.experiments.config import ExperimentConfig

    seen = []

    class Run:
        def __init__(self, *args):
            pass

        def run(self):
            seen.append(neuron.compiled_lif_enabled())
            return {}

    monkeypatch.setattr(trainer, "_Run", Run)
    for setting in (True, False):
        trainer.train(ExperimentConfig(compile_lif=setting))
    assert seen == [True, False] and not neuron.compiled_lif_enabled()
