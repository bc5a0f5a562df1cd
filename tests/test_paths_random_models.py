"""Random models on the engine's two paths: layer by layer must give what step by step gives.

The other tests of :mod:`leanspike.multistep` prove each special path on nets chosen for it;
these draw nets from the layers a user combines (convolutions of any stride, padding,
dilation and groups, PyTorch's and leanspike's norms with every option, LIF neurons of every
reset, poolings, dropout, MLP heads) and inputs of several memory layouts, and compare
float64 gradients and norm statistics of several methods on the two paths. A differential
fuzz of this kind (thousands of draws) found the layout and shared-module faults fixed in
262351b; these seeds keep a cheap sample of it in the suite.
"""

import copy
import random

import pytest
import torch
from torch import nn

from leanspike import BPTT, LIF, SLTT, SLTTK, TBPTT, Rectangle, Sigmoid, Triangle
from leanspike.engine import Engine, infer
from leanspike.layers import SequenceDropout, SequenceDropout2d, StepBatchNorm1d, StepBatchNorm2d, WSConv2d

TOL = dict(atol=1e-10, rtol=1e-9)
METHODS = {"bptt": BPTT, "tbptt2": lambda: TBPTT(2), "sltt": SLTT,
           "sltt-k1": lambda: SLTTK(1, generator=torch.Generator().manual_seed(5))}


def _lif(rng: random.Random) -> LIF:
    threshold = rng.choice([0.5, 1.0])
    surrogate = rng.choice([Triangle(width=threshold), Sigmoid(4.0), Rectangle(width=threshold)])
    return LIF(decay=rng.choice([0.0, 0.5, 0.9]), v_threshold=threshold, surrogate=surrogate,
               reset=rng.choice(["soft", "hard", "soft-unleaked"]), detach_reset=rng.random() < 0.3)


def _norm(rng: random.Random, channels: int, dims: int) -> nn.Module:
    cls = rng.choice([nn.BatchNorm2d, StepBatchNorm2d] if dims == 2 else [nn.BatchNorm1d, StepBatchNorm1d])
    return cls(channels, affine=rng.random() < 0.8, track_running_stats=rng.random() < 0.8,
               momentum=rng.choice([0.1, None]))


def _out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def random_model(rng: random.Random, channels: int = 2, size: int = 8, classes: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    c, h = channels, size
    for _ in range(rng.randint(1, 3)):
        k, s, p, d = rng.choice([1, 3, 3, 5]), rng.choice([1, 1, 2]), rng.choice([0, 1]), rng.choice([1, 1, 2])
        if _out(h, k, s, p, d) < 2:
            k, s, p, d = 3, 1, 1, 1
        out = rng.choice([2, 4, 6])
        groups = 2 if c % 2 == 0 and rng.random() < 0.3 else 1
        conv_cls = WSConv2d if rng.random() < 0.2 else nn.Conv2d
        layers += [conv_cls(c, out, k, stride=s, padding=p, dilation=d, groups=groups, bias=rng.random() < 0.5)]
        c, h = out, _out(h, k, s, p, d)
        if rng.random() < 0.85:
            layers.append(_norm(rng, c, 2))
        layers.append(_lif(rng))
        if rng.random() < 0.3:
            layers.append(SequenceDropout2d(0.2) if rng.random() < 0.5 else SequenceDropout(0.2))
        if h >= 4 and rng.random() < 0.5:
            layers.append(rng.choice([nn.AvgPool2d(2), nn.MaxPool2d(2)]))
            h //= 2
        elif rng.random() < 0.15:
            layers.append(nn.AdaptiveAvgPool2d(2 * h))  # upsampling: a view whose cells repeat
            h *= 2
    layers.append(nn.Flatten())
    features = c * h * h
    if rng.random() < 0.6:
        hidden = rng.choice([5, 8])
        layers += [nn.Linear(features, hidden)] + ([_norm(rng, hidden, 1)] if rng.random() < 0.6 else [])
        layers.append(_lif(rng))
        features = hidden
    layers.append(nn.Linear(features, classes))
    net = nn.Sequential(*layers)
    with torch.no_grad():  # enough spikes that every gradient is exercised
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(2.5)
    return net


def random_input(rng: random.Random, T: int, B: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randint(0, 10 ** 6))
    x = torch.rand(T, B, 2, 8, 8, generator=g)
    x = (x < 0.4).double() if rng.random() < 0.5 else 2 * x
    layout = rng.choice(["contiguous", "channels-last", "batch-first"])
    if layout == "channels-last":
        x = torch.stack([step.contiguous(memory_format=torch.channels_last) for step in x])
    elif layout == "batch-first":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    return x


def _run(net: nn.Sequential, method, x, y, sequence: bool, monkeypatch):
    net = copy.deepcopy(net)
    if not sequence:
        monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
    torch.manual_seed(11)  # the dropout masks
    try:
        grads = method.compute_gradients(net, x, y)
        out = infer(net.eval(), x)
    finally:
        monkeypatch.undo()
    buffers = [b.clone() for b in net.buffers()]
    return grads, buffers, out


@pytest.mark.parametrize("seed", range(40))
def test_random_models_agree_on_both_paths(float64, seed, monkeypatch):
    rng = random.Random(seed)
    net = random_model(rng)
    T, B = rng.randint(2, 4), rng.randint(3, 5)
    x = random_input(rng, T, B)
    y = torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(seed))
    from leanspike.multistep import supports_sequence

    assert supports_sequence(net), net
    for name, factory in METHODS.items():
        g_seq, b_seq, o_seq = _run(net, factory(), x, y, True, monkeypatch)
        g_step, b_step, o_step = _run(net, factory(), x, y, False, monkeypatch)
        for key in g_seq:
            torch.testing.assert_close(g_seq[key], g_step[key], **TOL, msg=lambda m: f"{name} {key}: {m}\n{net}")
        for a, b in zip(b_seq, b_step, strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name} buffers: {m}\n{net}")
        torch.testing.assert_close(o_seq, o_step, **TOL)
    assert any(g.abs().sum() > 0 for g in g_seq.values())
