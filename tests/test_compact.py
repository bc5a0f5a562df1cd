"""Compact saving of binary tensors: 1 bit per element, restored bit for bit, seen by the meter."""

import contextlib

import torch
import torch.nn.functional as F

import pytest

from leanspike.compact import CompactSaved, _pack_torch, binary_scale, mark_binary, mark_derived, pack_bits
from leanspike.layers import SequenceDropout, StepBatchNorm2d
from leanspike.measure import SavedTensorMeter


def _linear_grads(x, w, compact):
    w = w.detach().clone().requires_grad_(True)
    coef = torch.arange(x.shape[0] * w.shape[0], dtype=x.dtype).view(x.shape[0], w.shape[0])
    with SavedTensorMeter(exclude=[w, coef]) as meter:
        ctx = CompactSaved() if compact else contextlib.nullcontext()
        with ctx:
            (F.linear(x, w) * coef).sum().backward()
    return w.grad, meter.peak_bytes


def _bytes(n: int) -> int:
    return -(-n // 8)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 1000, 4099])
def test_both_bit_packers_agree_on_the_layout(n):
    g = torch.Generator().manual_seed(n)
    bits = torch.rand(n + 3, generator=g) < 0.4
    for flat in (bits[:n], bits[3:]):  # the second starts 3 bytes into its storage
        packed = pack_bits(flat)
        assert packed.dtype == torch.uint8 and packed.numel() == _bytes(flat.numel())
        assert torch.equal(_pack_torch(flat), packed)  # the off-CPU packer, byte for byte
        # element i is bit i % 8 of byte i // 8
        weights = 2 ** torch.arange(8)
        padded = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8).long()
        assert torch.equal(packed.long(), (padded * weights).sum(1))


def test_marked_spikes_are_saved_as_bits_and_restored_exactly():
    spikes = mark_binary((torch.rand(32, 50) < 0.3).float())
    w = torch.randn(7, 50)
    grad_full, bytes_full = _linear_grads(spikes, w, compact=False)
    grad_compact, bytes_compact = _linear_grads(spikes, w, compact=True)
    assert bytes_full == spikes.numel() * 4 and bytes_compact == spikes.numel() // 8
    assert torch.equal(grad_full, grad_compact)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
def test_restored_bits_keep_the_layout_of_the_saved_tensor(layout):
    base = (torch.rand(3, 5, 4, 6) < 0.5).float()
    x = {"channels_last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.transpose(1, 3),
         "strided": base[:, ::2]}[layout]  # not dense: its bits are packed densely
    mark_binary(x)
    seen = []
    class Keep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a)
            return a * b

        @staticmethod
        def backward(ctx, grad):
            (a,) = ctx.saved_tensors
            seen.append(a)
            return None, grad * a
    b = torch.randn(x.shape, requires_grad=True)
    with SavedTensorMeter(exclude=[b]) as meter, CompactSaved():
        out = Keep.apply(x, b)
        del x  # the bits, not the original, are what backward sees
        out.sum().backward()
    expected = {"channels_last": base.contiguous(memory_format=torch.channels_last),
                "transposed": base.transpose(1, 3), "strided": base[:, ::2]}[layout]
    assert meter.peak_bytes == -(-expected.numel() // 8)
    assert torch.equal(seen[0], expected) and torch.equal(b.grad, expected)
    if layout != "strided":
        assert seen[0].stride() == expected.stride()


def test_dropout_scaled_spikes_keep_their_exact_value():
    torch.manual_seed(0)
    drop = SequenceDropout(0.3).train()
    spikes = mark_binary((torch.rand(16, 40) < 0.5).float())
    out = drop(spikes)
    scale = binary_scale(out)
    assert isinstance(scale, torch.Tensor)
    assert set(out.unique().tolist()) == {0.0, float(scale)}  # the mask's value, bit for bit
    assert binary_scale(drop.mask) is scale
    w = torch.randn(5, 40)
    assert torch.equal(_linear_grads(out, w, False)[0], _linear_grads(out, w, True)[0])


def test_in_place_change_voids_the_mark():
    spikes = mark_binary((torch.rand(8, 10) < 0.5).float())
    spikes.mul_(0.5)
    assert binary_scale(spikes) is None
    grad_full, _ = _linear_grads(spikes, torch.randn(3, 10), compact=False)
    grad_compact, saved = _linear_grads(spikes, torch.randn(3, 10), compact=True)
    assert saved == spikes.numel() * 4  # kept as float


def test_derived_tensor_is_stored_as_its_source_and_recomputed():
    spikes = mark_binary((torch.rand(4, 3, 4, 4) < 0.4).float())
    repeat = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    upsampled = mark_derived(repeat(spikes), repeat, spikes)  # 4× the elements of its source
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with SavedTensorMeter(exclude=[w]) as meter, CompactSaved():
        F.conv2d(upsampled, w).sum().backward()
    assert meter.peak_bytes == spikes.numel() // 8  # the spikes' bits; the upsampled floats are not kept
    ref = w.detach().clone().requires_grad_(True)
    F.conv2d(repeat(spikes), ref).sum().backward()
    assert torch.equal(w.grad, ref.grad)


def test_a_small_derived_tensor_is_kept_as_it_is():
    spikes = mark_binary((torch.rand(4, 3, 16, 16) < 0.4).float())
    pooled = mark_derived(F.avg_pool2d(spikes, 8), lambda t: F.avg_pool2d(t, 8), spikes)
    w = torch.randn(5, 3, 1, 1, requires_grad=True)
    with SavedTensorMeter(exclude=[w]) as meter, CompactSaved():
        F.conv2d(pooled, w).sum().backward()
    assert meter.peak_bytes == pooled.numel() * 4 < spikes.numel() // 8  # cheaper than the recipe's bits


def test_a_pooled_map_of_spikes_is_kept_as_the_spikes_bits():
    spikes = mark_binary((torch.rand(4, 3, 8, 8) < 0.4).float())
    pooled = mark_derived(F.avg_pool2d(spikes, 2), lambda t: F.avg_pool2d(t, 2), spikes)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with SavedTensorMeter(exclude=[w]) as meter, CompactSaved():
        F.conv2d(pooled, w, padding=1).sum().backward()
    assert meter.peak_bytes == spikes.numel() // 8 < pooled.numel() * 4  # 8× less than its floats
    ref = w.detach().clone().requires_grad_(True)
    F.conv2d(F.avg_pool2d(spikes, 2), ref, padding=1).sum().backward()
    assert torch.equal(w.grad, ref.grad)


def test_one_copy_for_a_tensor_saved_many_times():
    mask = mark_binary((torch.rand(64, 64) < 0.5).float())
    xs = [torch.randn(64, 64, requires_grad=True) for _ in range(5)]
    with SavedTensorMeter(exclude=xs) as meter, CompactSaved():
        outs = [x * mask for x in xs]  # the product saves the mask for x's gradient
        assert meter.current_bytes == mask.numel() // 8
        sum(o.sum() for o in outs).backward()
    assert meter.current_bytes == 0
    assert all(torch.equal(x.grad, mask) for x in xs)


def test_step_norm_saves_only_its_input():
    bn = StepBatchNorm2d(4).train()
    x = torch.randn(3, 5, 4, 6, 6, requires_grad=True)
    with SavedTensorMeter(exclude=[bn, x]) as meter:
        out = bn.forward_sequence(x)
    assert meter.peak_bytes == 2 * 3 * 4 * 4  # per-step mean and 1/std; x itself is excluded
    out.sum().backward()


def test_a_view_that_returns_its_input_is_not_its_own_recipe():
    spikes = mark_binary((torch.rand(6, 5) < 0.5).float())
    flat = torch.nn.Flatten()(spikes)  # 2-D: Flatten hands back the same tensor
    assert flat is spikes
    assert mark_derived(flat, lambda t: t, spikes) is spikes and binary_scale(spikes) == 1.0
    w = torch.randn(3, 5, requires_grad=True)
    with CompactSaved():
        F.linear(flat, w).sum().backward()
    assert torch.equal(w.grad, spikes.sum(0).expand(3, 5))


def test_bits_are_restored_once_the_original_is_gone():
    torch.manual_seed(0)
    drop = SequenceDropout(0.3).train()
    x = torch.rand(16, 40)
    w = torch.randn(5, 40)
    ref_w = w.clone().requires_grad_(True)
    spikes = mark_binary((x < 0.5).float())
    out = drop(spikes)
    F.linear(out, ref_w).sum().backward()  # no hooks: the float tensor itself is saved
    w.requires_grad_(True)
    with CompactSaved():
        loss = F.linear(drop(mark_binary((x < 0.5).float())), w).sum()  # the only reference is saved
        loss.backward()
    assert torch.equal(w.grad, ref_w.grad)


def test_saving_a_derived_tensor_as_it_is_lets_its_source_go():
    import weakref

    spikes = mark_binary((torch.rand(4, 3, 8, 8) < 0.4).float())
    pooled = mark_derived(F.avg_pool2d(spikes, 8), lambda t: F.avg_pool2d(t, 8), spikes)
    alive = weakref.ref(spikes)
    w = torch.randn(5, 3, 1, 1, requires_grad=True)
    with CompactSaved():
        out = F.conv2d(pooled, w)  # an 8×8 average is kept as floats: its mark must not pin the spikes
    del spikes
    assert alive() is None
    out.sum().backward()
    assert w.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_pack_comparison_is_the_torch_comparison_packed(dtype, layout):
    """numpy's compare-and-pack (contiguous float32/64 on the CPU) and torch's (anything else)
    give the same bits, element i in the tensor's logical order, -0.0 and NaN included."""
    from leanspike.compact import pack_bits, pack_comparison

    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 7, 11, generator=g).to(dtype)
    t[0, 0, :4] = torch.tensor([0.0, -0.0, float("nan"), 0.7])
    if layout == "transposed":
        t = t.transpose(0, 2)
    for compare, value, op in (("ne", 0, torch.ne), ("ge", 0.7, torch.ge)):
        assert torch.equal(pack_comparison(t, compare, value), pack_bits(op(t, value).reshape(-1)))
