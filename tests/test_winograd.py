"""F(2×2, 3×3) convolutions (leanspike.winograd): forward, input gradient and weight gradient
against PyTorch's own convolution and its autograd, in float64; the float32 path the engine
takes, against a float64 reference; and the per-batch kernel cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import LIF, SLTT
from leanspike import winograd, winograd_f43
from leanspike.layers import StepBatchNorm2d
from leanspike.multistep import Conv2dSequence

from conftest import assert_float32_gradients_match_float64, count_calls, float64_conv_reference


@pytest.mark.parametrize("shape,padding", [
    ((2, 3, 4, 5, 5), (1, 1)),   # odd map: the last tile row and column are cut
    ((2, 3, 4, 6, 7), (1, 1)),
    ((1, 2, 3, 3, 3), (0, 0)),   # one output pixel
    ((2, 3, 2, 4, 5), (2, 2)),   # full padding: the output grows
    ((3, 5, 4, 1, 1), (1, 1)),   # 1×1 map
    ((2, 3, 4, 7, 4), (0, 1)),   # different padding per axis
    ((2, 3, 4, 6, 6), (2, 0)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_both_gradients_equal_the_convolution(shape, padding, bias):
    torch.manual_seed(0)
    n, c, o, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(o, dtype=torch.float64) if bias else None
    ref = F.conv2d(x, weight, b, 1, padding)
    g = torch.randn_like(ref)
    want_x, want_w = torch.autograd.grad(ref, (x, weight), g)

    kernels = winograd.kernel_transform(weight)
    torch.testing.assert_close(winograd.conv3x3(x.detach(), kernels, b, padding), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd.conv3x3_input_grad(g, kernels, padding), want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd.conv3x3_weight_grad(g, x.detach(), padding), want_w, rtol=1e-12, atol=1e-12)


def test_weight_gradient_in_parts_is_the_whole(monkeypatch):
    """The weight gradient bounds its transformed temporaries by summing parts of the batch."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 6, 5, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 4, 6, 5, dtype=torch.float64)
    want = torch.autograd.grad(F.conv2d(x, weight, None, 1, (1, 1)), weight, g)[0]
    monkeypatch.setattr(winograd, "PART_VALUES", 2 * 16 * 3 * 3 * 4)  # two samples per part: four parts
    torch.testing.assert_close(winograd.conv3x3_weight_grad(g, x, (1, 1)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, per_sample, limit, part", [
    (8, 147456, 1 << 20, 8),  # SLTT's step on 256-channel 12x12 maps: whole (it ran as 7 + 1)
    (48, 73728, 1 << 20, 12),  # BPTT's 48 samples on 512-channel 6x6 maps: 4 even parts
    (80, 73728, 1 << 20, 14),  # 6 parts: 14, ..., 14, 10
    (7, 10, 20, 2),  # 4 parts: 2, 2, 2, 1
    (3, 500, 100, 1),  # one sample over the limit: one a part
    (5, 10, 15, 1),  # 50 values > 2 x 15: parts of at most 15 values, 1 sample
    (5, 10, 24, 2),  # 3 parts: 2, 2, 1 (not 3 + 2, over the limit)
    (5, 10, 25 + 1, 5),  # 50 values <= 2 x 26: whole
])
def test_batch_parts_are_the_fewest_and_even(n, per_sample, limit, part):
    assert winograd.batch_parts(n, per_sample, limit) == part
    if part < n:
        assert part * per_sample <= max(limit, per_sample)
        assert -(-n // part) == -(-n // max(1, limit // per_sample))  # no more parts than the limit needs


@pytest.mark.parametrize("shape", [(7, 3, 4, 6, 5), (5, 2, 3, 4, 4)])
def test_forward_and_input_gradient_in_parts_are_the_whole(monkeypatch, shape):
    """Big calls run over parts of the batch (bounded temporaries): the same values as one call."""
    torch.manual_seed(0)
    n, c, o, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64)
    b = torch.randn(o, dtype=torch.float64)
    ref = F.conv2d(x, weight, b, 1, (1, 1))
    g = torch.randn_like(ref)
    (want_x,) = torch.autograd.grad(ref, x, g)
    kernels = winograd.kernel_transform(weight)
    th, tw = (h + 1) // 2, (w + 1) // 2  # 2×2 output tiles (same-size output)
    monkeypatch.setattr(winograd, "TRANSFORM_PART_VALUES", 2 * 16 * th * tw * max(c, o))  # two samples a part
    torch.testing.assert_close(winograd.conv3x3(x.detach(), kernels, b, (1, 1)), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd.conv3x3_input_grad(g, kernels, (1, 1)), want_x, rtol=1e-12, atol=1e-12)


def test_engine_takes_the_winograd_weight_gradient_from_16_samples_in_float32(monkeypatch):
    """Calls of at least WINOGRAD_DW_MIN_BATCH samples that F(2×2, 3×3) applies to compute their
    weight gradient with it (fewer keep the picks measured faster at batch 8): PyTorch's float64
    gradient within float32 rounding either way."""
    from leanspike import multistep

    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    calls = []
    real = winograd.conv3x3_weight_grad
    monkeypatch.setattr(winograd, "conv3x3_weight_grad", lambda g, *a: calls.append(len(g)) or real(g, *a))
    for batch in (8, multistep.WINOGRAD_DW_MIN_BATCH):
        x = (torch.rand(batch, 128, 6, 6) < 0.3).float()
        out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [conv.weight, conv.bias], g)
        _, want = float64_conv_reference(conv, x, g)
        for a, b in zip(got, want[1:]):
            assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()
    assert calls == [multistep.WINOGRAD_DW_MIN_BATCH]


def test_applies_only_where_it_was_measured_to_pay():
    w = torch.zeros(128, 128, 3, 3)
    x = torch.zeros(8, 128, 6, 6)
    assert winograd.applies(x, w, (1, 1), (1, 1))
    assert not winograd.applies(x.double(), w.double(), (1, 1), (1, 1))  # float64 keeps oneDNN
    assert not winograd.applies(x, w, (2, 2), (1, 1))  # stride
    assert not winograd.applies(x, torch.zeros(128, 128, 5, 5), (1, 1), (2, 2))  # kernel size
    assert not winograd.applies(torch.zeros(8, 64, 6, 6), torch.zeros(128, 64, 3, 3), (1, 1), (1, 1))  # channels
    assert not winograd.applies(torch.zeros(8, 128, 3, 3), w, (1, 1), (1, 1))  # map under MIN_SIDE


def test_float32_conv_sequence_takes_it_and_keeps_the_gradients(monkeypatch):
    """A batch-8, 128-channel 6×6 call in float32 runs F(2×2, 3×3): output and all three
    gradients match a float64 reference within float32 rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    x = (torch.rand(8, 128, 6, 6) < 0.3).float().requires_grad_(True)
    assert winograd.applies(x, conv.weight, (1, 1), (1, 1))
    calls = count_calls(monkeypatch, winograd, "conv3x3")
    out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
    assert calls
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    ref, want = float64_conv_reference(conv, x, g)
    for a, b in [(out, ref)] + list(zip(got, want)):
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()


def test_cache_reuses_a_transform_until_the_weight_changes():
    weight = nn.Parameter(torch.randn(4, 3, 3, 3))
    with winograd.KernelCache():
        first = winograd.transformed(weight)
        assert winograd.transformed(weight) is first
        with torch.no_grad():
            weight.mul_(2.0)  # an optimizer step
        second = winograd.transformed(weight)
        assert second is not first
        torch.testing.assert_close(second, 2.0 * first)
        derived = weight * 1.0  # not a leaf: made anew at each call, never kept
        assert winograd.transformed(derived) is not winograd.transformed(derived)
    assert winograd.transformed(weight) is not second  # outside any cache: made per call
    assert not winograd.KernelCache._active


def test_sltt_gradients_in_float32_match_float64_through_the_winograd_path(monkeypatch):
    """SLTT on a net whose second convolution qualifies (batch 4 per step, 128 channels, 6×6):
    its float32 gradients are the float64 ones (oneDNN, no Winograd) within float32 rounding.
    No neuron fires after that convolution, so rounding cannot flip a spike downstream of it."""
    torch.manual_seed(0)
    x = (torch.rand(3, 4, 2, 6, 6) < 0.4).float()
    y = torch.randint(0, 5, (4,))
    calls = count_calls(monkeypatch, winograd, "conv3x3_input_grad")
    assert_float32_gradients_match_float64(SLTT(), 128, x, y, rtol=1e-5)  # float64 takes no Winograd
    assert len(calls) == 3  # one backward per step through the 128-channel convolution


def _winograd_net(seed=0):
    torch.manual_seed(seed)
    lif = lambda: LIF(decay=0.5, surrogate="sigmoid")  # noqa: E731
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), StepBatchNorm2d(8), lif(),
                        nn.Conv2d(8, 8, 3, padding=1), StepBatchNorm2d(8), lif(),
                        nn.Conv2d(8, 5, 3, padding=1), lif(), nn.Flatten(), nn.Linear(5 * 8 * 8, 3))
    with torch.no_grad():
        for i in (0, 3, 6):
            net[i].weight.mul_(3.0)
    return net.double()


@pytest.mark.parametrize("method", ["sltt", "sltt-k2", "tbptt2"])
def test_small_calls_sum_weight_gradients_before_the_adjoint_transform(float64, monkeypatch, method):
    """Inside the engine, F(2×2, 3×3) weight gradients of calls under WINOGRAD_DW_MIN_BATCH
    samples are summed across calls in the tile domain (WeightGradSums.add_tiles) and transformed
    once at the flush: the gradients equal autograd's through plain convolutions, step by step
    (float64; F(2×2, 3×3) let in for float64 and 8 channels here)."""
    from leanspike import SLTTK, TBPTT, multistep
    from leanspike.engine import Engine

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    real_applies = winograd.applies
    monkeypatch.setattr(winograd, "applies", lambda x, w, s, p: real_applies(x.float(), w.float(), s, p))
    make = {"sltt": SLTT, "tbptt2": lambda: TBPTT(2),
            "sltt-k2": lambda: SLTTK(2, generator=torch.Generator().manual_seed(3))}[method]
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(4, 3, 2, 8, 8, generator=g) < 0.4).double(), torch.randint(0, 3, (3,), generator=g)
    added = []
    real_add = multistep.WeightGradSums.add_tiles
    monkeypatch.setattr(multistep.WeightGradSums, "add_tiles", lambda self, w, *a: added.append(w) or real_add(self, w, *a))
    grads = make().compute_gradients(_winograd_net(), x, y)
    assert len({id(w) for w in added}) == 1 and len(added) > 1  # the 8 → 8 conv, summed over its calls
    monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
    reference = make().compute_gradients(_winograd_net(), x, y)  # step by step, nn.Conv2d's own autograd
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], atol=1e-10, rtol=1e-10,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("algorithm, components", [(winograd, 16), (winograd_f43, 36)])
def test_weight_gradient_from_tiles_is_the_adjoint_of_the_kernel_transform(algorithm, components):
    """⟨Gᵀ du G, w⟩ = ⟨du, G w Gᵀ⟩ for the layouts the two use ([k, O, C] and [k, C, O]), for
    F(2×2, 3×3) and F(4×4, 3×3)."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    du = torch.randn(components, 5, 3, dtype=torch.float64)
    lhs = (algorithm.weight_grad_from_tiles(du) * w).sum()
    rhs = (du.transpose(1, 2) * algorithm.kernel_transform(w)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parts", [False, True])
def test_tiles_reordered_through_channels_last_are_the_same_convolution(monkeypatch, parts):
    """From REORDER_MIN_CHANNELS output channels the output transform reorders its tiles by two
    copies (channels-last first): both algorithms' forward and input gradient still equal the
    convolution (float64), whole and written part by part into the output (``out``)."""
    torch.manual_seed(0)
    monkeypatch.setattr(winograd, "REORDER_MIN_CHANNELS", 3)
    if parts:
        monkeypatch.setattr(winograd, "TRANSFORM_PART_VALUES", 64)
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64, requires_grad=True)  # whole tiles of 2 and of 4
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, weight, None, 1, (1, 1))
    g = torch.randn_like(ref)
    want_x, = torch.autograd.grad(ref, x, g)
    kernels = winograd.kernel_transform(weight)
    torch.testing.assert_close(winograd.conv3x3(x.detach(), kernels, None, (1, 1)), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd.conv3x3_input_grad(g, kernels, (1, 1)), want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winograd_f43.conv3x3(x.detach(), winograd_f43.kernel_transform(weight), None, (1, 1)),
                               ref.detach(), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(winograd_f43.conv3x3_input_grad(g, winograd_f43.flipped_kernel_transform(weight), (1, 1)),
                               want_x, rtol=1e-11, atol=1e-11)


def test_gathered_product_runs_chunk_by_chunk_into_the_whole(monkeypatch):
    """Over GATHER_VALUES values the transforms' gathers and products run chunk by chunk of
    samples (the parts batch_parts gives), each written into its columns: the values of one
    whole product (float64), for the F(2×2, 3×3) and F(4×4, 3×3) gradient tiles (an odd map
    padded per chunk) and F(4×4, 3×3)'s input transform."""
    torch.manual_seed(0)
    matrix = torch.randn(5, 3, dtype=torch.float64)
    data = torch.randn(7, 3, 4, dtype=torch.float64)  # [samples, j, per sample]
    chunks = []

    def gather(i0, i1):
        chunks.append((i0, i1))
        return data[i0:i1].permute(1, 0, 2).reshape(3, -1)

    monkeypatch.setattr(winograd, "GATHER_VALUES", 24)  # 2 samples of 12 values
    got = winograd.gathered_product(matrix, 7, 4, gather)
    assert chunks == [(0, 2), (2, 4), (4, 6), (6, 7)]
    torch.testing.assert_close(got, matrix @ data.permute(1, 0, 2).reshape(3, -1), rtol=1e-14, atol=1e-14)

    x = torch.randn(5, 6, 9, 7, dtype=torch.float64)
    g = torch.randn(5, 4, 7, 5, dtype=torch.float64)
    calls = [lambda: winograd_f43._input_transform(x, (1, 1), 2, 2),
             lambda: winograd_f43._output_gradient_tiles(g, 2, 2),
             lambda: winograd._output_gradient_tiles(g, 4, 3)]
    monkeypatch.setattr(winograd, "GATHER_VALUES", 1 << 40)
    whole = [call() for call in calls]
    monkeypatch.setattr(winograd, "GATHER_VALUES", 1)  # one sample per chunk
    chunks.clear()
    real = winograd.gathered_product
    monkeypatch.setattr(winograd, "gathered_product", lambda m, n, p, gather: real(
        m, n, p, lambda i0, i1: chunks.append((i0, i1)) or gather(i0, i1)))
    for call, want in zip(calls, whole):
        torch.testing.assert_close(call(), want, rtol=1e-13, atol=1e-13)
    assert chunks == [(i, i + 1) for i in range(5)] * 3


def test_a_last_pass_frees_the_transforms_after_the_backward(monkeypatch):
    """In a pass the engine marks as the weights' last (``KernelCache.last_pass``), the
    backward drops the transforms it read from the cache, F(2×2, 3×3)'s and F(4×4, 3×3)'s
    flipped ones; otherwise they stay for the next step. The gradients are the same."""
    from leanspike import multistep

    monkeypatch.setattr(multistep, "WINOGRAD43", True)
    monkeypatch.setattr(multistep, "USE_NNPACK", False)
    torch.manual_seed(0)
    for conv, x, kernel in [(nn.Conv2d(128, 128, 3, padding=1), (torch.rand(8, 128, 6, 6) < 0.3).float(), winograd),
                            (nn.Conv2d(64, 64, 3, padding=1), (torch.rand(8, 64, 12, 12) < 0.3).float(), winograd_f43)]:
        x.requires_grad_(True)
        calls = count_calls(monkeypatch, kernel, "conv3x3_input_grad")
        grads = []
        with winograd.KernelCache() as cache:
            for last in (False, True):
                cache.last_pass = last
                out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
                grads.append(torch.autograd.grad(out, [x, conv.weight, conv.bias], torch.ones_like(out)))
                assert len(cache._kernels) == (0 if last else 1)
        assert len(calls) == 2
        for kept, freed in zip(*grads):
            torch.testing.assert_close(kept, freed, rtol=0, atol=0)


@pytest.mark.parametrize("method, flags", [("sltt", [False, False, False, True]),
                                           ("sltt-k2", [False, True]),
                                           ("tbptt2-interval", [True, True]),
                                           ("bptt", [True])])
def test_the_engine_marks_the_last_backward_of_the_weights(monkeypatch, method, flags):
    """``last_pass`` is on only during the backward after which the weights run no more in the
    batch: SLTT's last step, SLTT-K's last sampled step, the one BPTT interval, and every
    interval that an update follows."""
    from leanspike import BPTT, SLTTK, TBPTT

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    real_applies = winograd.applies
    monkeypatch.setattr(winograd, "applies", lambda x, w, s, p: real_applies(x.float(), w.float(), s, p))
    seen = []
    real_forget = winograd.KernelCache.forget
    monkeypatch.setattr(winograd.KernelCache, "forget", lambda self, w, t: seen.append(self.last_pass) or real_forget(self, w, t))
    make = {"sltt": SLTT, "bptt": BPTT, "tbptt2-interval": lambda: TBPTT(2, update="interval"),
            "sltt-k2": lambda: SLTTK(2, generator=torch.Generator().manual_seed(3))}[method]
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(4, 3, 2, 8, 8, generator=g) < 0.4).double(), torch.randint(0, 3, (3,), generator=g)
    net = _winograd_net()
    make().train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.1))
    assert seen == flags  # one backward through the 8 → 8 convolution per graph interval


def test_a_second_backward_through_a_kept_graph_gives_the_same_gradients(monkeypatch):
    """The F(2×2, 3×3) node lets go of its kernels after its backward; going back through the
    same graph again (``retain_graph``) takes the plain kernels and gives the same gradients."""
    from leanspike import multistep

    monkeypatch.setattr(multistep, "USE_NNPACK", False)
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    x = (torch.rand(8, 128, 6, 6) < 0.3).float().requires_grad_(True)
    calls = count_calls(monkeypatch, winograd, "conv3x3_input_grad")
    with winograd.KernelCache():
        out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
        g = torch.randn_like(out)
        first = torch.autograd.grad(out, [x, conv.weight, conv.bias], g, retain_graph=True)
        second = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    assert len(calls) == 1
    for a, b in zip(first, second):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("f43", [False, True], ids=["F(2x2,3x3)", "F(4x4,3x3)"])
@pytest.mark.parametrize("method", ["bptt", "sltt"])
def test_engine_gradients_with_every_transform_in_chunks_and_parts(float64, monkeypatch, method, f43):
    """The engine's gradients (float64) when every Winograd gather runs one sample per chunk and
    every weight gradient one sample per part, and the transforms are dropped in the last pass:
    autograd's through plain convolutions, step by step (F(2×2, 3×3) or F(4×4, 3×3) let in for
    float64 and 8 channels)."""
    from leanspike import BPTT, multistep
    from leanspike.engine import Engine

    for module, name in ((winograd, "applies"), (winograd_f43, "applies")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda x, w, s, p, real=real: real(x.float(), w.float(), s, p))
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    monkeypatch.setattr(winograd_f43, "MIN_CHANNELS", 8)
    monkeypatch.setattr(multistep, "WINOGRAD43", f43)
    monkeypatch.setattr(multistep, "USE_NNPACK", False)
    monkeypatch.setattr(winograd, "GATHER_VALUES", 1)
    monkeypatch.setattr(winograd, "PART_VALUES", 1)
    make = {"bptt": BPTT, "sltt": SLTT}[method]
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(4, 3, 2, 8, 8, generator=g) < 0.4).double(), torch.randint(0, 3, (3,), generator=g)
    used = count_calls(monkeypatch, winograd_f43 if f43 else winograd, "conv3x3_input_grad")
    grads = make().compute_gradients(_winograd_net(), x, y)
    assert used
    monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
    reference = make().compute_gradients(_winograd_net(), x, y)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], atol=1e-10, rtol=1e-10,
                                   msg=lambda m: f"{name}: {m}")
