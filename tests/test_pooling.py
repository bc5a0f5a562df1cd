"""Window averages by strided additions equal PyTorch's avg_pool2d, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from leanspike import pooling

TILED = [  # (shape, kernel, ceil_mode, divisor_override)
    ((3, 4, 8, 8), [2, 2], False, None),
    ((3, 4, 7, 9), [2, 2], False, None),  # odd sides: the last row / column is dropped
    ((2, 3, 9, 9), [3, 3], False, None),
    ((2, 3, 8, 6), [2, 3], True, None),  # ceil_mode with whole windows only
    ((2, 3, 8, 7), [2, 2], False, 3),
    ((5, 2, 2, 2), [2, 2], False, None),
    ((2, 3, 4, 5), [1, 1], False, None),  # one-element windows: a copy
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kernel,ceil,divisor", TILED)
def test_window_average_is_avg_pool2d_bit_for_bit(shape, kernel, ceil, divisor, dtype, monkeypatch):
    monkeypatch.setattr(pooling, "MIN_VALUES", 1)  # small test tensors take the strided path too
    args = (kernel, kernel, [0, 0], ceil, True, divisor)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 5).to(dtype)
    assert pooling.tiles(x, args)
    ref = F.avg_pool2d(x, *args)
    out = pooling.avg_pool2d(x, args)
    assert out.shape == ref.shape and torch.equal(out, ref) and out.is_contiguous()
    channels_last = pooling.avg_pool2d(x.contiguous(memory_format=torch.channels_last), args)
    assert torch.equal(channels_last, ref) and channels_last.is_contiguous()

    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(F.avg_pool2d(x_ref, *args), x_ref, grad)
    (g_new,) = torch.autograd.grad(pooling.avg_pool2d(x_new, args), x_new, grad)
    assert torch.equal(g_new, g_ref)


def test_window_average_gradcheck(monkeypatch):
    monkeypatch.setattr(pooling, "MIN_VALUES", 1)
    args = ([2, 2], [2, 2], [0, 0], False, True, None)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pooling.AvgPool2d.apply(t, args), (x,))


@pytest.mark.parametrize("args", [
    ([3, 3], [2, 2], [0, 0], False, True, None),  # overlapping windows
    ([2, 2], [2, 2], [1, 1], False, True, None),  # padded
    ([2, 2], [2, 2], [0, 0], True, True, None),  # ceil_mode with a partial window (7 % 2)
])
def test_other_poolings_keep_pytorch_kernel(args):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    assert not pooling.tiles(x, args)
    grad = torch.randn_like(F.avg_pool2d(x, *args))
    out = pooling.avg_pool2d(x, args)
    assert torch.equal(out, F.avg_pool2d(x, *args))
    (g_new,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(F.avg_pool2d(x, *args), x, grad)
    assert torch.equal(g_new, g_ref)


def test_small_tensors_and_half_types_keep_pytorch_kernel():
    args = ([2, 2], [2, 2], [0, 0], False, True, None)
    assert not pooling.tiles(torch.zeros(8, 512, 3, 3), args)
    assert not pooling.tiles(torch.zeros(8, 512, 6, 6, dtype=torch.bfloat16), args)  # kernel sums in float32
    assert pooling.tiles(torch.zeros(8, 512, 6, 6), args)


def test_backward_saves_no_values():
    """Only the input's shape is kept for backward (the spikes' bytes stay with the next layer)."""
    args = ([2, 2], [2, 2], [0, 0], False, True, None)
    x = torch.randn(2, 64, 32, 32, requires_grad=True)
    assert pooling.tiles(x, args)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        pooling.avg_pool2d(x, args).sum().backward()
    assert saved == []
