"""Temporally-truncated local BPTT and block splitting, proved against independent computations.

The hand reference below unrolls the paper's LIF (Eq. 1, soft reset outside the leak),
the rectangle surrogate (Eq. 6) and the rate MSE (Eq. 3) with plain tensor operations
and a test-local spike function; it shares no code with the engine.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import BPTT, LIF, RateMSE, TruncatedLocalBPTT, spiking_depth
from leanspike.blocks import split_blocks, unit_groups
from leanspike.losses import WindowLoss
from leanspike.measure import SavedTensorMeter
from leanspike.surrogate import Rectangle

TOL = dict(atol=1e-10, rtol=1e-10)
DECAY, V_TH, WIDTH = 0.6, 0.5, 0.5


class _Heaviside(torch.autograd.Function):
    """H(x) forward; rectangle (1/a)·1(|x| < a/2) backward (Eq. 6), written out here."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).double()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (torch.abs(x) < WIDTH / 2).double() / WIDTH


def lif():
    return LIF(decay=DECAY, v_threshold=V_TH, reset="soft-unleaked", surrogate=Rectangle(WIDTH))


def make_mlp(seed=0):
    """Two spiking layers and a spiking output layer (not counted in the depth): 4 → 6 → 5 → 3."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), lif(), nn.Linear(6, 5), lif(), nn.Linear(5, 3), lif()).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.0)
                m.bias.add_(0.25)
    return net


def make_conv(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), lif(), nn.AvgPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), lif(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3), lif()).double()
    with torch.no_grad():
        net[4].weight.mul_(3.0)
        net[7].weight.mul_(3.0)
        net[7].bias.add_(0.3)
    return net


def data(T=5, B=6, seed=1, shape=(4,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, B, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g)
    return x, y


def nonzero_count(grads):
    return sum(int(g.abs().sum() > 0) for g in grads.values())


def assert_same(a, b, min_nonzero=4):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], **TOL, msg=lambda m: f"{n}: {m}")
    assert nonzero_count(a) >= min_nonzero, "the test network must produce non-trivial gradients"


# -- blocks ---------------------------------------------------------------------------------

def test_split_at_spiking_boundaries():
    net = make_conv()
    assert spiking_depth(net) == 2  # the spiking output layer is the last block's classifier
    groups = unit_groups(net)
    assert [[type(m).__name__ for m in g] for g in groups] == [
        ["Conv2d", "BatchNorm2d", "LIF", "AvgPool2d"], ["Conv2d", "LIF", "Flatten", "Linear", "LIF"]]
    blocks = split_blocks(net, 1)
    assert [len(b) for b in blocks] == [4, 5]
    assert all(a is b for a, b in zip([m for blk in blocks for m in blk], net))  # shared, in order


def test_children_before_first_and_after_last_unit():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 5), lif())

        def forward(self, x):
            return x + self.body(x)

    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 5), lif(), nn.Dropout(0.2),
                        Residual(), nn.Linear(5, 3))
    assert spiking_depth(net) == 2
    names = [[type(m).__name__ for m in g] for g in unit_groups(net)]
    assert names == [["Flatten", "Dropout", "Linear", "LIF", "Dropout"], ["Residual", "Linear"]]


@pytest.mark.parametrize("n", [0, -1, 3])
def test_bad_block_size(n):
    with pytest.raises(ValueError, match=rf"n.*{n}" if n > 0 else rf"{n}"):
        split_blocks(make_mlp(), n)
    if n > 0:
        with pytest.raises(ValueError, match="n = 3 exceeds the model's spiking depth 2"):
            split_blocks(make_mlp(), n)


def test_split_needs_sequential_with_spikes():
    with pytest.raises(ValueError, match="Sequential"):
        split_blocks(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="no spiking layer"):
        split_blocks(nn.Sequential(nn.Linear(2, 2)), 1)


# -- argument checks --------------------------------------------------------------------------

def test_argument_errors(float64):
    x, y = data(T=4)
    for kwargs, pattern in [(dict(k=0, n=1), "k must be.*0"), (dict(k=2, n=0), "n must be.*0"),
                            (dict(k=1, n=1, classifier="fixed"), "classifier.*'fixed'")]:
        with pytest.raises(ValueError, match=pattern):
            TruncatedLocalBPTT(**kwargs)
    with pytest.raises(ValueError, match="k = 5 exceeds the number of time steps T = 4"):
        TruncatedLocalBPTT(5, 1).compute_gradients(make_mlp(), x, y)
    with pytest.raises(ValueError, match="n = 3 exceeds the model's spiking depth 2"):
        TruncatedLocalBPTT(2, 3).compute_gradients(make_mlp(), x, y)


# -- identities and proofs ------------------------------------------------------------------

def test_k_T_n_depth_is_bptt_mlp(float64):
    net = make_mlp()
    x, y = data(T=5)
    assert_same(TruncatedLocalBPTT(5, 2).compute_gradients(net, x, y), BPTT(RateMSE()).compute_gradients(net, x, y))


def test_k_T_n_depth_is_bptt_conv(float64):
    net = make_conv()
    x, y = data(T=4, B=3, shape=(2, 4, 4))
    assert_same(TruncatedLocalBPTT(4, 2).compute_gradients(net, x, y), BPTT(RateMSE()).compute_gradients(net, x, y))


def reference(params, heads, x, y, k, n, lr=0.0, head_lr=None):
    """Algorithm 1 unrolled by hand for the MLP (two spiking layers + spiking output layer).

    ``params``: [(W, b)] per layer; ``heads``: [(G, g)] for the blocks but the last.
    Returns the gradients summed over the intervals and the weights after the updates
    (``lr > 0``: SGD after every interval, the state carried on detached; the
    classifiers learn at ``head_lr``, by default ``lr``).
    """
    head_lr = lr if head_lr is None else head_lr
    T = x.shape[0]
    layers = [(W.clone(), b.clone()) for W, b in params]
    cls = [(G.clone(), g.clone()) for G, g in heads]
    sums = {"layers": [(torch.zeros_like(W), torch.zeros_like(b)) for W, b in layers],
            "heads": [(torch.zeros_like(G), torch.zeros_like(g)) for G, g in cls]}
    onehot = F.one_hot(y, 3).double()
    state = {}  # (name, index) -> (u, s) of the previous step
    for t0 in range(0, T, k):
        t1 = min(t0 + k, T)
        lw = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in layers]
        hw = [(G.clone().requires_grad_(), g.clone().requires_grad_()) for G, g in cls]
        state = {key: (u.detach(), s.detach()) for key, (u, s) in state.items()}  # truncation

        def neuron(key, current):
            if key in state:
                u_prev, s_prev = state[key]
                u = DECAY * u_prev - V_TH * s_prev + current  # Eq. (1)
            else:
                u = current
            s = _Heaviside.apply(u - V_TH)  # Eq. (2)
            state[key] = (u, s)
            return s

        head_spikes = [[] for _ in hw]
        out_spikes = []
        depth = len(lw) - 1  # the output layer is the last block's classifier, not a block layer
        for t in range(t0, t1):
            h = x[t]
            for layer, (W, b) in enumerate(lw):
                if 0 < layer < depth and layer % n == 0:
                    h = h.detach()  # block input: no error crosses into the previous block
                h = neuron(("layer", layer), h @ W.T + b)
                if (layer + 1) % n == 0 and layer + 1 < depth:
                    j = layer // n
                    G, g = hw[j]
                    head_spikes[j].append(neuron(("head", j), h @ G.T + g))
            out_spikes.append(h)
        rates = [torch.stack(s).mean(0) for s in head_spikes] + [torch.stack(out_spikes).mean(0)]
        loss = sum(((r - onehot) ** 2).sum(1).div(3).mean() for r in rates)  # Eq. (3), batch mean
        leaves = [p for pair in lw + hw for p in pair]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]
        for i in range(len(lw)):
            gW, gb = grads[2 * i], grads[2 * i + 1]
            sums["layers"][i] = (sums["layers"][i][0] + gW, sums["layers"][i][1] + gb)
            layers[i] = (layers[i][0] - lr * gW, layers[i][1] - lr * gb)
        for j in range(len(hw)):
            gG, gg = grads[2 * len(lw) + 2 * j], grads[2 * len(lw) + 2 * j + 1]
            sums["heads"][j] = (sums["heads"][j][0] + gG, sums["heads"][j][1] + gg)
            cls[j] = (cls[j][0] - head_lr * gG, cls[j][1] - head_lr * gg)
    return sums, layers, cls


def _pairs(net):
    return [(m.weight.detach().clone(), m.bias.detach().clone()) for m in net if isinstance(m, nn.Linear)]


def _head_pairs(method):
    return [(h[1].weight.detach().clone(), h[1].bias.detach().clone()) for h in method.heads or []]


@pytest.mark.parametrize("k,n", [(2, 2), (3, 1), (2, 1), (5, 1)])
def test_gradients_equal_hand_reference(float64, k, n):
    """k ∤ T = 5: the last interval is shorter; heads on all blocks but the last."""
    net = make_mlp()
    x, y = data(T=5)
    method = TruncatedLocalBPTT(k, n)
    got = method.compute_gradients(net, x, y)
    assert len(method.heads or []) == math.ceil(2 / n) - 1
    sums, _, _ = reference(_pairs(net), _head_pairs(method), x, y, k, n)
    want = {}
    for i, name in enumerate(["0", "2", "4"]):
        want[f"{name}.weight"], want[f"{name}.bias"] = sums["layers"][i]
    for j, (gG, gg) in enumerate(sums["heads"]):
        want[f"_method.{2 * j}"], want[f"_method.{2 * j + 1}"] = gG, gg
    assert_same(got, want, min_nonzero=6)


@pytest.mark.parametrize("classifier", ["trainable", "random"])
def test_train_step_updates_per_interval_like_algorithm_1(float64, classifier):
    net = make_mlp()
    x, y = data(T=5)
    lr = 0.5
    method = TruncatedLocalBPTT(2, 1, classifier=classifier)
    method.engine(net, x)  # builds the classifiers so the reference can start from them
    start, heads = _pairs(net), _head_pairs(method)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    result = method.train_step(net, x, y, opt)
    assert result.optimizer_steps == 3 and result.backward_passes == 3 * 2  # one per block and interval
    head_lr = lr if classifier == "trainable" else 0.0
    _, layers, cls = reference(start, heads, x, y, 2, 1, lr=lr, head_lr=head_lr)
    for (W, b), got in zip(layers, [m for m in net if isinstance(m, nn.Linear)]):
        torch.testing.assert_close(got.weight.detach(), W, **TOL)
        torch.testing.assert_close(got.bias.detach(), b, **TOL)
    for (G, g), head in zip(cls, method.heads):
        torch.testing.assert_close(head[1].weight.detach(), G, **TOL)
        torch.testing.assert_close(head[1].bias.detach(), g, **TOL)
    moved = [not torch.equal(a[0], m.weight) for a, m in zip(start, [m for m in net if isinstance(m, nn.Linear)])]
    assert all(moved)
    assert head_lr == 0.0 or any(not torch.equal(a[0], h[1].weight) for a, h in zip(heads, method.heads))


class _OnlyBlock(WindowLoss):
    """RateMSE for block ``j`` only; the engine scores the blocks in order, once per interval."""

    decomposes = "interval"

    def __init__(self, j, n_blocks):
        self.j, self.n_blocks, self.calls = j, n_blocks, 0

    def __call__(self, outputs, targets, total_steps):
        block = self.calls % self.n_blocks
        self.calls += 1
        value = RateMSE()(outputs, targets, total_steps)
        return value if block == self.j else value.detach() * 0


def test_block_gets_gradient_only_from_its_own_loss(float64):
    net = make_mlp()
    x, y = data(T=5)
    full = TruncatedLocalBPTT(2, 1).compute_gradients(net, x, y)
    owners = {"0.weight": 0, "0.bias": 0, "2.weight": 1, "2.bias": 1, "4.weight": 1, "4.bias": 1,
              "_method.0": 0, "_method.1": 0}
    total = {n: torch.zeros_like(g) for n, g in full.items()}
    for j in range(2):
        method = TruncatedLocalBPTT(2, 1, loss=_OnlyBlock(j, 2))
        grads = method.compute_gradients(net, x, y)
        for name, g in grads.items():
            if owners[name] != j:
                assert torch.count_nonzero(g) == 0, f"{name} got gradient from block {j}'s loss"
            total[name] += g
        assert any(torch.count_nonzero(grads[name]) for name in owners if owners[name] == j)
    assert_same(total, full, min_nonzero=8)


@pytest.mark.parametrize("n", [1, 2])
def test_no_gradient_crosses_an_interval_boundary(float64, n):
    net = make_mlp()
    x, y = data(T=7)
    x.requires_grad_(True)
    method = TruncatedLocalBPTT(3, n)
    engine, schedule = method.engine(net, x), method.schedule(7)
    seen = []

    def backward(loss):  # once per block and interval, blocks in order
        (gx,) = torch.autograd.grad(loss, x, retain_graph=True, allow_unused=True)
        seen.append(torch.zeros_like(x) if gx is None else gx)
        loss.backward()

    engine.run(x, y, method.loss, schedule, lambda: None, backward)
    blocks = len(engine.blocks)
    assert schedule.intervals == [(0, 3), (3, 6), (6, 7)]
    assert blocks == 3 - n and len(seen) == 3 * blocks
    for i, (t0, t1) in enumerate(schedule.intervals):
        first, *later = seen[i * blocks:(i + 1) * blocks]
        assert all(torch.count_nonzero(g) == 0 for g in later)  # later blocks see a detached input
        assert torch.count_nonzero(first[:t0]) == 0 and torch.count_nonzero(first[t1:]) == 0
    # gradients do flow inside an interval, back to its first step, so the zeros above are the cut
    assert torch.count_nonzero(seen[blocks][3]) > 0 and torch.count_nonzero(seen[0][0]) > 0


def test_blocks_run_and_free_their_graphs_one_by_one(float64):
    """Each block runs over the interval and calls backward before the next block runs, so
    the peak of bytes saved for backward is the largest block's graph, not all blocks'."""
    net = make_mlp()
    x, y = data(T=6)

    def measure(method):
        engine, schedule = method.engine(net, x), method.schedule(6)
        heads = [h for h in engine.heads if h is not None]
        at_backward = []
        with SavedTensorMeter(exclude=[net, *heads, x]) as meter:
            def backward(loss):
                at_backward.append(meter.current_bytes)
                loss.backward()
            engine.run(x, y, method.loss, schedule, lambda: None, backward)
        return meter.peak_bytes, at_backward

    local, at_backward = measure(TruncatedLocalBPTT(6, 1))  # two blocks, one interval
    whole, _ = measure(TruncatedLocalBPTT(6, 2))  # one block: the same net without classifiers
    assert len(at_backward) == 2 and all(b > 0 for b in at_backward)
    assert local == max(at_backward)  # nothing of block 0 is alive when block 1 runs
    # all at once, the local net would hold more than the whole net (block 0 adds a classifier)
    assert local < whole < sum(at_backward)


def test_random_classifiers_never_change(float64):
    net = make_mlp()
    x, y = data(T=6)
    method = TruncatedLocalBPTT(2, 1, classifier="random", seed=7)
    opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.9, weight_decay=0.1)
    method.train_step(net, x, y, opt)
    before = [[p.detach().clone() for p in h.parameters()] for h in method.heads]
    layer0 = net[0].weight.detach().clone()
    for _ in range(4):
        method.train_step(net, x, y, opt)
    for head, saved in zip(method.heads, before):
        for p, q in zip(head.parameters(), saved):
            assert not p.requires_grad and torch.equal(p, q)
    assert method.extra_parameters() == []
    assert not torch.equal(layer0, net[0].weight)
    again = TruncatedLocalBPTT(2, 1, classifier="random", seed=7)
    again.engine(make_mlp(), x)
    assert all(torch.equal(p, q) for a, b in zip(before, again.heads) for p, q in zip(a, b.parameters()))


@pytest.mark.parametrize("T,k", [(5, 2), (6, 3), (7, 7), (4, 1)])
def test_optimizer_steps_per_batch(float64, T, k):
    net = make_mlp()
    x, y = data(T=T)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    calls = []
    original = opt.step
    opt.step = lambda *a, **kw: (calls.append(1), original(*a, **kw))[1]
    method = TruncatedLocalBPTT(k, 1)
    result = method.train_step(net, x, y, opt)
    assert result.optimizer_steps == len(calls) == math.ceil(T / k)
    assert result.backward_passes == math.ceil(T / k) * 2  # one per block and interval
    assert len(result.local_losses) == 2
    method.train_step(net, x, y, opt)
    assert len(calls) == 2 * math.ceil(T / k)
    known = [p for g in opt.param_groups for p in g["params"]]
    assert len(known) == len(set(map(id, known))) == 6 + 2  # the classifier added once


def test_classifiers_built_from_probe_without_side_effects(float64):
    net = make_conv()
    x, y = data(T=3, B=4, shape=(2, 4, 4))
    stats = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    method = TruncatedLocalBPTT(1, 1)
    method.engine(net, x)
    assert torch.equal(net[1].running_mean, stats[0]) and int(net[1].num_batches_tracked) == stats[1]
    assert all(m.training for m in net.modules())
    assert all(getattr(m, "carry", None) is None for m in net.modules())
    assert [h[1].in_features for h in method.heads] == [4 * 2 * 2]
    assert all(h[1].weight.dtype == torch.float64 for h in method.heads)
    neuron = method.heads[0][2]
    assert (neuron.decay, neuron.v_threshold, neuron.reset, neuron.surrogate) == (DECAY, V_TH, "soft-unleaked", Rectangle(WIDTH))
    assert neuron is not net[2]
    grads = method.compute_gradients(net, x, y)
    assert nonzero_count(grads) >= 6
    with pytest.raises(ValueError, match="one method instance per model"):
        method.engine(make_mlp(), data()[0])


def test_blocks_with_batch_statistics_only(float64):
    """A norm without running statistics normalises with the batch's even in eval mode, so the
    shape probe must see more than one sample (it saw one and raised on a legal model)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), lif(), nn.Linear(6, 5), lif(),
                        nn.Linear(5, 3), lif()).double()
    with torch.no_grad():
        net[1].weight.fill_(2.0)
        net[1].bias.fill_(0.5)
        for m in (net[3], net[5]):
            m.weight.mul_(3.0)
            m.bias.add_(0.3)
    x, y = data(T=4, B=5)
    assert_same(TruncatedLocalBPTT(4, 2).compute_gradients(net, x, y), BPTT(RateMSE()).compute_gradients(net, x, y))
    method = TruncatedLocalBPTT(2, 1)
    assert nonzero_count(method.compute_gradients(net, x, y)) >= 6
    assert [h[1].in_features for h in method.heads] == [6]
