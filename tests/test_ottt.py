"""OTTT against its equations written out by hand (float64), and its memory behaviour.

OTTT per step t, with traces â[t] = λ·â[t−1] + s[t] (â⁰ the trace of the input):
    e_o = ∂(ℓ(o[t]) / T)/∂o,  ∇W² += e_oᵀ·â¹[t],  e_u¹ = (e_o·W²) ⊙ H'(u¹[t] − V_th),
    ∇W¹ += e_u¹ᵀ·â⁰[t]; the membrane enters every step detached (no temporal errors).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import LIF, OTTT, RateMSE, SLTT
from leanspike.layers import WSLinear
from leanspike.measure import SavedTensorMeter
from leanspike.surrogate import Triangle

TOL = dict(atol=1e-10, rtol=1e-10)
DECAY = 0.5


def make_fc(seed=0, linear=nn.Linear):
    torch.manual_seed(seed)
    net = nn.Sequential(linear(4, 6), LIF(decay=DECAY, surrogate=Triangle(1.0)), linear(6, 3)).double()
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[0].bias.add_(0.3)
    return net


def data(T=5, B=7, seed=1, shape=(4,), classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, B, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (B,), generator=g)
    return x, y


def ottt_by_hand(net, x, y, lr=0.0, update="batch"):
    """The equations of the module docstring; returns summed gradients and final weights."""
    W1, b1 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    W2, b2 = net[2].weight.detach().clone(), net[2].bias.detach().clone()
    sums = [torch.zeros_like(p) for p in (W1, b1, W2, b2)]
    T, B = x.shape[:2]
    onehot = F.one_hot(y, 3).double()
    carry = torch.zeros(B, 6, dtype=torch.float64)
    a0 = torch.zeros(B, 4, dtype=torch.float64)
    a1 = torch.zeros(B, 6, dtype=torch.float64)
    for t in range(T):
        a0 = DECAY * a0 + x[t]
        u = carry + x[t] @ W1.T + b1
        s = (u >= 1.0).double()
        carry = DECAY * (u - s)
        a1 = DECAY * a1 + s
        o = s @ W2.T + b2
        e_o = (torch.softmax(o, 1) - onehot) / B / T
        e_u = (e_o @ W2) * torch.clamp(1.0 - torch.abs(u - 1.0), min=0)  # triangle, γ = 1
        grads = [e_u.T @ a0, e_u.sum(0), e_o.T @ a1, e_o.sum(0)]
        sums = [acc + g for acc, g in zip(sums, grads)]
        if update == "step":
            W1, b1, W2, b2 = (p - lr * g for p, g in zip((W1, b1, W2, b2), grads))
    if update == "batch":
        W1, b1, W2, b2 = (p - lr * g for p, g in zip((W1, b1, W2, b2), sums))
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    return dict(zip(names, sums)), dict(zip(names, (W1, b1, W2, b2)))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], **TOL, msg=lambda m: f"{n}: {m}")
    assert sum(int(v.abs().sum() > 0) for v in a.values()) == len(a), "gradients must be non-trivial"


def test_gradients_equal_equations_by_hand(float64):
    net = make_fc()
    x, y = data()
    want, _ = ottt_by_hand(net, x, y)
    assert_same(OTTT().compute_gradients(net, x, y), want)
    # the traces make it differ from SLTT, which uses the spikes themselves
    sltt = SLTT().compute_gradients(net, x, y)
    assert not torch.allclose(sltt["2.weight"], want["2.weight"])
    torch.testing.assert_close(sltt["2.bias"], want["2.bias"], **TOL)


@pytest.mark.parametrize("update,steps", [("batch", 1), ("step", 6)])
def test_train_step_matches_hand_sgd(float64, update, steps):
    net = make_fc()
    x, y = data(T=6)
    _, want = ottt_by_hand(net, x, y, lr=0.4, update=update)
    opt = torch.optim.SGD(net.parameters(), lr=0.4)
    calls = []
    original = opt.step
    opt.step = lambda *a, **kw: (calls.append(1), original(*a, **kw))[1]
    result = OTTT(update=update).train_step(net, x, y, opt)
    assert result.optimizer_steps == len(calls) == steps and result.backward_passes == 6
    got = {n: p.detach() for n, p in net.named_parameters()}
    for n in want:
        torch.testing.assert_close(got[n], want[n], **TOL)


def make_conv(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                        LIF(decay=DECAY, surrogate=Triangle(1.0)), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 2 * 2, 4)).double()
    with torch.no_grad():
        net[1].bias.add_(0.8)
    return net


def traced(fn, x, trace, weight, bias):
    """fn(x) forward, errors to x through W, W's gradient against the trace (test-local)."""
    on_trace = fn(trace, weight, bias)
    return fn(x, weight.detach(), None if bias is None else bias.detach()) + (on_trace - on_trace.detach())


def reference_conv(net, x, y):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    T = x.shape[0]
    carry = a0 = a1 = None
    conv = lambda h, w, b: F.conv2d(h, w, b, padding=1)  # noqa: E731
    for t in range(T):
        a0 = x[t] if a0 is None else DECAY * a0 + x[t]
        cur = traced(conv, x[t], a0, params["0.weight"], None)
        cur = F.batch_norm(cur, None, None, params["1.weight"], params["1.bias"], training=True)
        u = cur if carry is None else carry + cur
        s = (u >= 1.0).double()
        s = s + (u - u.detach()) * torch.clamp(1.0 - torch.abs(u - 1.0), min=0).detach()  # triangle
        carry = (DECAY * (u - s)).detach()
        h = F.avg_pool2d(s, 2).flatten(1)
        a1 = h.detach() if a1 is None else DECAY * a1 + h.detach()
        o = traced(F.linear, h, a1, params["5.weight"], params["5.bias"])
        loss = F.cross_entropy(o, y) / T
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            sums[n] += g
    return sums


def test_conv_with_batch_norm_equals_reference(float64):
    net = make_conv()
    x, y = data(T=4, B=5, shape=(2, 4, 4), classes=4)
    got = OTTT().compute_gradients(net, x, y)
    assert_same(got, reference_conv(net, x, y))


class PlainLinear(nn.Linear):
    """nn.Linear with its own forward: takes OTTT's generic (unfused) path."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def test_generic_path_equals_fused_path(float64):
    x, y = data()
    fused = OTTT().compute_gradients(make_fc(), x, y)
    generic = OTTT().compute_gradients(make_fc(linear=PlainLinear), x, y)
    assert_same(generic, fused)
    ws = OTTT().compute_gradients(make_fc(linear=WSLinear), x, y)
    assert all(torch.isfinite(g).all() for g in ws.values())
    assert ws["0.weight"].abs().sum() > 0


def test_model_left_unchanged_and_traces_reset_per_batch(float64):
    net = make_fc()
    x, y = data()
    with torch.no_grad():
        before = net(x[0])
    method = OTTT()
    first = method.compute_gradients(net, x, y)
    second = method.compute_gradients(net, x, y)  # a leaked trace would change this
    for n in first:
        assert torch.equal(first[n], second[n])
    method.compute_gradients(net, data(B=3)[0], data(B=3)[1])  # another batch size: fresh traces
    assert all("forward" not in m.__dict__ for m in net.modules())
    with pytest.raises(ValueError):
        method.compute_gradients(net, x, y[:2])  # fails inside the method: hooks still removed
    assert all("forward" not in m.__dict__ for m in net.modules())
    for m in net.modules():
        if isinstance(m, LIF):
            m.reset_state()
    with torch.no_grad():
        assert torch.equal(net(x[0]), before)


def test_rejects_losses_that_do_not_split_per_step():
    with pytest.raises(ValueError, match="per-step loss"):
        OTTT(RateMSE()).compute_gradients(make_fc().float(), data()[0].float(), data()[1])
    with pytest.raises(ValueError, match="update.*'interval'"):
        OTTT(update="interval")


def saved_peak(method, T):
    net = make_conv().float()
    x, y = data(T=T, B=4, shape=(2, 4, 4), classes=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with SavedTensorMeter(exclude=[net]) as meter:
        method.train_step(net, x.float(), y, opt)
    return meter.peak_bytes


def test_saved_tensor_peak_constant_in_T():
    from leanspike import BPTT

    short, long = saved_peak(OTTT(), 3), saved_peak(OTTT(), 12)
    assert short > 0 and long == short
    assert saved_peak(BPTT(), 12) > 2 * saved_peak(BPTT(), 3)  # the meter does see growth


def test_runs_under_autocast():
    net = make_conv().float()
    x, y = data(T=2, B=4, shape=(2, 4, 4), classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads = OTTT().compute_gradients(net, x.float(), y)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert grads["0.weight"].abs().sum() > 0
