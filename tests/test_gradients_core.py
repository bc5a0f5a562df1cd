"""Gradient proofs for BPTT, TBPTT, SLTT and SLTT-K against independent computations (float64).

The references below re-implement the LIF network from its equations with plain tensor
operations and a test-local spike function; they share no code with the engine.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import BPTT, LIF, SLTT, SLTTK, TBPTT, MeanOutputCE, PerStepCE, SLTTLoss
from leanspike.surrogate import Rectangle, Sigmoid, Triangle

TOL = dict(atol=1e-10, rtol=1e-10)
V_TH = 1.0


class _Heaviside(torch.autograd.Function):
    """H(x) forward; the chosen surrogate formula, written out here, backward."""

    @staticmethod
    def forward(ctx, x, kind, width):
        ctx.save_for_backward(x)
        ctx.kind, ctx.width = kind, width
        return (x >= 0).double()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * surrogate_formula(ctx.kind, ctx.width, x), None, None


def surrogate_formula(kind, width, x):
    if kind == "rectangle":
        return (torch.abs(x) < width / 2).double() / width
    if kind == "triangle":
        return torch.clamp(width - torch.abs(x), min=0) / width**2
    sig = 1 / (1 + torch.exp(-width * x))
    return width * sig * (1 - sig)


def make_fc(decay, reset, kind="triangle", width=1.0, seed=0):
    torch.manual_seed(seed)
    sur = {"rectangle": Rectangle(width), "triangle": Triangle(width), "sigmoid": Sigmoid(width)}[kind]
    net = nn.Sequential(nn.Linear(4, 6), LIF(decay=decay, reset=reset, surrogate=sur),
                        nn.Linear(6, 5), LIF(decay=decay, reset=reset, surrogate=sur),
                        nn.Linear(5, 3)).double()
    # large enough weights that neurons fire and the surrogate windows are hit
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
                m.bias.add_(0.3)
    return net


def reference_fc(net, x, y, decay, reset, kind, width, loss="ce", detach_at=()):
    """Unrolled LIF network; the carried state is detached before every step in ``detach_at``."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    T = x.shape[0]
    lin = [("0.weight", "0.bias"), ("2.weight", "2.bias")]
    u_prev = [None, None]
    s_prev = [None, None]
    outs = []
    for t in range(T):
        h = x[t]
        for i, (wn, bn) in enumerate(lin):
            current = h @ params[wn].T + params[bn]
            if u_prev[i] is None:
                u = current
            else:
                up, sp = u_prev[i], s_prev[i]
                if t in detach_at:
                    up, sp = up.detach(), sp.detach()
                if reset == "soft":
                    u = decay * (up - V_TH * sp) + current
                elif reset == "hard":
                    u = decay * up * (1 - sp) + current
                else:
                    u = decay * up - V_TH * sp + current
            s = _Heaviside.apply(u - V_TH, kind, width)
            u_prev[i], s_prev[i] = u, s
            h = s
        outs.append(h @ params["4.weight"].T + params["4.bias"])
    o = torch.stack(outs)
    if loss == "ce":
        value = sum(F.cross_entropy(o[t], y) for t in range(T)) / T
    elif loss == "mean-ce":
        value = F.cross_entropy(o.mean(0), y)
    else:
        value = sum(0.95 * F.cross_entropy(o[t], y) + 0.05 * ((o[t] - 1.0) ** 2).mean() for t in range(T)) / T
    grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(params, grads)}


def data(T=5, B=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, B, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g)
    return x, y


def assert_same(a, b):
    assert a.keys() == b.keys()
    nonzero = 0
    for n in a:
        torch.testing.assert_close(a[n], b[n], **TOL, msg=lambda m: f"{n}: {m}")
        nonzero += int(a[n].abs().sum() > 0)
    assert nonzero >= 4, "the test network must produce non-trivial gradients"


@pytest.mark.parametrize("reset", ["soft", "hard", "soft-unleaked"])
@pytest.mark.parametrize("kind,width", [("triangle", 1.0), ("rectangle", 0.5), ("sigmoid", 4.0)])
def test_bptt_equals_unrolled_reference(float64, reset, kind, width):
    net = make_fc(0.6, reset, kind, width)
    x, y = data()
    got = BPTT().compute_gradients(net, x, y)
    want = reference_fc(net, x, y, 0.6, reset, kind, width)
    assert_same(got, want)


@pytest.mark.parametrize("loss,name", [(SLTTLoss(), "sltt"), (MeanOutputCE(), "mean-ce")])
def test_bptt_other_losses(float64, loss, name):
    net = make_fc(0.5, "soft")
    x, y = data()
    assert_same(BPTT(loss).compute_gradients(net, x, y), reference_fc(net, x, y, 0.5, "soft", "triangle", 1.0, name))


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_tbptt_equals_truncated_reference(float64, reset, k):
    net = make_fc(0.7, reset)
    x, y = data(T=7)
    got = TBPTT(k).compute_gradients(net, x, y)
    want = reference_fc(net, x, y, 0.7, reset, "triangle", 1.0, detach_at=set(range(0, 7, k)))
    assert_same(got, want)


def test_tbptt_k_equals_T_is_bptt(float64):
    net = make_fc(0.8, "soft")
    x, y = data(T=6)
    assert_same(TBPTT(6).compute_gradients(net, x, y), BPTT().compute_gradients(net, x, y))


@pytest.mark.parametrize("loss", [PerStepCE(), SLTTLoss()])
def test_sltt_equals_tbptt_k1(float64, loss):
    net = make_fc(0.5, "soft")
    x, y = data(T=6)
    assert_same(SLTT(loss).compute_gradients(net, x, y), TBPTT(1, loss).compute_gradients(net, x, y))


def sltt_by_hand(net, x, y, decay, reset):
    """SLTT Eqs. (12)–(13) computed without autograd: per step, e_u^L = (1/T)·∂ℓ/∂o·W,
    spatial errors only, e_W^l[t] = e_u^l[t]ᵀ s^{l-1}[t], summed over t."""
    W = [net[0].weight.detach(), net[2].weight.detach(), net[4].weight.detach()]
    b = [net[0].bias.detach(), net[2].bias.detach(), net[4].bias.detach()]
    gW = [torch.zeros_like(w) for w in W]
    gb = [torch.zeros_like(v) for v in b]
    T, B = x.shape[:2]
    carry = [torch.zeros(B, 6, dtype=x.dtype), torch.zeros(B, 5, dtype=x.dtype)]
    onehot = F.one_hot(y, 3).double()
    for t in range(T):
        acts, us = [x[t]], []
        for i in range(2):
            u = carry[i] + acts[-1] @ W[i].T + b[i]
            s = (u >= V_TH).double()
            carry[i] = decay * (u - V_TH * s) if reset == "soft" else decay * u * (1 - s)
            us.append(u)
            acts.append(s)
        o = acts[-1] @ W[2].T + b[2]
        e = (torch.softmax(o, 1) - onehot) / B / T  # ∂(ℓ/T)/∂o for the batch-mean CE
        gW[2] += e.T @ acts[2]
        gb[2] += e.sum(0)
        for i in (1, 0):
            e_s = e @ W[i + 1]
            e = e_s * torch.clamp(1.0 - torch.abs(us[i] - V_TH), min=0)  # triangle, γ = 1
            gW[i] += e.T @ acts[i]
            gb[i] += e.sum(0)
    return {"0.weight": gW[0], "0.bias": gb[0], "2.weight": gW[1], "2.bias": gb[1],
            "4.weight": gW[2], "4.bias": gb[2]}


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_sltt_equals_paper_equations_by_hand(float64, reset):
    net = make_fc(0.09, reset)  # τ = 1.1
    x, y = data(T=6)
    assert_same(SLTT().compute_gradients(net, x, y), sltt_by_hand(net, x, y, 0.09, reset))


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("steps", [2, 3, 6, 9])
def test_sltt_several_steps_per_backward_equals_paper_equations(float64, reset, steps):
    """Back-propagating ``steps`` steps at once (layer by layer over them) keeps SLTT's gradient."""
    net = make_fc(0.5, reset)
    x, y = data(T=6)
    method = SLTT(steps_per_backward=steps)
    assert_same(method.compute_gradients(net, x, y), sltt_by_hand(net, x, y, 0.5, reset))
    assert all(m.temporal_routes for m in net if isinstance(m, LIF))  # left as a plain forward expects


def test_sltt_several_steps_per_backward_step_by_step_path(float64):
    """The same through the step-by-step path (a hook keeps the model off the layer-by-layer one)."""
    net = make_fc(0.5, "soft")
    net[1].register_forward_hook(lambda *args: None)
    x, y = data(T=6)
    result = SLTT(steps_per_backward=4).train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.0))
    assert result.backward_passes == 2  # steps 0-3, then 4-5
    assert_same(SLTT(steps_per_backward=4).compute_gradients(net, x, y), sltt_by_hand(net, x, y, 0.5, "soft"))


def test_sltt_k_with_K_equals_T_is_sltt(float64):
    net = make_fc(0.5, "soft")
    x, y = data(T=5)
    assert_same(SLTTK(5).compute_gradients(net, x, y), SLTT().compute_gradients(net, x, y))


@pytest.mark.parametrize("scale", ["T", "K"])
def test_sltt_k_equals_sltt_restricted_to_its_steps(float64, scale):
    """SLTT-K's gradient is the sum of SLTT's per-step gradients over the K chosen steps."""
    net = make_fc(0.5, "soft")
    x, y = data(T=6)
    method = SLTTK(2, scale=scale, generator=torch.Generator().manual_seed(3))
    got = method.compute_gradients(net, x, y)
    chosen = method.last_steps
    factor = 1.0 if scale == "T" else 6 / 2
    want = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for t in chosen:
        # the SLTT gradient of step t alone: zero the other steps' loss by the reference
        full = sltt_by_hand_step(net, x, y, t)
        for n in want:
            want[n] += factor * full[n]
    assert_same(got, want)


def sltt_by_hand_step(net, x, y, step):
    """Autograd reference of SLTT for a single step's loss / T, state detached."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    T = x.shape[0]
    carry = [None, None]
    for t in range(step + 1):
        h = x[t]
        for i, (wn, bn) in enumerate([("0.weight", "0.bias"), ("2.weight", "2.bias")]):
            u = h @ params[wn].T + params[bn] + (0 if carry[i] is None else carry[i])
            s = _Heaviside.apply(u - V_TH, "triangle", 1.0)
            carry[i] = (0.5 * (u - V_TH * s)).detach()
            h = s
        o = h @ params["4.weight"].T + params["4.bias"]
    loss = F.cross_entropy(o, y) / T
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads))


def test_sltt_k_runs_K_backwards_and_no_graph_elsewhere(float64):
    net = make_fc(0.5, "soft")
    x, y = data(T=8)
    grad_enabled = []
    net[0].register_forward_hook(lambda m, i, o: grad_enabled.append(o.requires_grad))
    method = SLTTK(3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    result = method.train_step(net, x, y, opt)
    assert result.backward_passes == 3
    assert result.optimizer_steps == 1
    assert len(set(method.last_steps)) == 3
    assert [t for t, g in enumerate(grad_enabled) if g] == method.last_steps


def test_backward_and_update_counts(float64):
    net = make_fc(0.5, "soft")
    x, y = data(T=7)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    assert BPTT().train_step(net, x, y, opt).backward_passes == 1
    r = TBPTT(3).train_step(net, x, y, opt)
    assert (r.backward_passes, r.optimizer_steps) == (3, 1)  # intervals 3, 3, 1
    r = TBPTT(3, update="interval").train_step(net, x, y, opt)
    assert (r.backward_passes, r.optimizer_steps) == (3, 3)
    r = SLTT().train_step(net, x, y, opt)
    assert (r.backward_passes, r.optimizer_steps) == (7, 1)
    assert r.predictions.shape == (7,) and r.mean_output.shape == (7, 3)


def test_sltt_step_matches_manual_sgd(float64):
    net = make_fc(0.5, "soft")
    x, y = data(T=4)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = SLTT().compute_gradients(net, x, y)
    SLTT().train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.1))
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n], **TOL)


def make_conv(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), LIF(decay=0.5), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 2 * 2, 4)).double()
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    return net


def reference_conv(net, x, y, detach_each_step):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    u_prev = s_prev = None
    total = 0
    T = x.shape[0]
    for t in range(T):
        cur = F.conv2d(x[t], params["0.weight"], params["0.bias"], padding=1)
        if u_prev is None:
            u = cur
        else:
            up, sp = (u_prev.detach(), s_prev.detach()) if detach_each_step else (u_prev, s_prev)
            u = 0.5 * (up - sp) + cur
        s = _Heaviside.apply(u - 1.0, "triangle", 1.0)
        u_prev, s_prev = u, s
        h = F.avg_pool2d(s, 2).flatten(1)
        o = h @ params["4.weight"].T + params["4.bias"]
        total = total + F.cross_entropy(o, y) / T
    grads = torch.autograd.grad(total, list(params.values()))
    return dict(zip(params, grads))


@pytest.mark.parametrize("method,detach", [(BPTT(), False), (SLTT(), True), (TBPTT(1), True)])
def test_conv_net_gradients(float64, method, detach):
    net = make_conv()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    assert_same(method.compute_gradients(net, x, y), reference_conv(net, x, y, detach))
