"""Average pooling over non-overlapping windows as strided slice additions.

VGG-style SNNs pool 2×2 windows with stride 2 on every stage. PyTorch's CPU
``avg_pool2d`` kernel walks each window with scalar loops, while the same average is
``kh·kw`` additions of strided views, which run vectorised: on VGG-11's stages with 48
samples, 2 threads, about 0.4× the time forward and 0.3-0.7× backward (the pooling table
of ``bench/conv_kernels.py``). The additions go in the kernel's order (row by row,
then one division), so the result is bit for bit ``avg_pool2d``'s, and so is the gradient.
Other poolings (overlapping or padded windows, partial windows from ``ceil_mode``) keep
PyTorch's kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: fewest input values for the strided additions: on smaller tensors their per-view overhead
#: outweighs the kernel's loops (512 × 3×3 maps at batch 8: 0.11 ms against 0.05 ms)
MIN_VALUES = 1 << 16

#: dtypes the kernel also accumulates in: for half types it sums in float32, which
#: additions in the tensor's own dtype would not match
_EXACT_DTYPES = (torch.float32, torch.float64)

#: (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override), as ``F.avg_pool2d`` takes them
PoolArgs = tuple[list[int], list[int], list[int], bool, bool, "int | None"]


def tiles(x: torch.Tensor, args: PoolArgs) -> bool:
    """Whether ``avg_pool2d(x, *args)`` averages whole, non-overlapping windows (stride =
    kernel, no padding, no partial window at the edges) of a 4-d float32/float64 CPU tensor
    of at least :data:`MIN_VALUES` values (measured and proven on CPU only)."""
    kernel, stride, padding, ceil_mode = args[:4]
    if (x.dim() != 4 or x.device.type != "cpu" or x.dtype not in _EXACT_DTYPES or x.numel() < MIN_VALUES or list(kernel) != list(stride)
            or any(padding)):
        return False
    sides = x.shape[2:]
    if any(side < k for side, k in zip(sides, kernel)):
        return False
    return not ceil_mode or all(side % k == 0 for side, k in zip(sides, kernel))


def _divisor(args: PoolArgs) -> int:
    kernel, divisor = args[0], args[5]
    return divisor if divisor else kernel[0] * kernel[1]


def window_average(x: torch.Tensor, args: PoolArgs) -> torch.Tensor:
    """``avg_pool2d(x, *args)`` for :func:`tiles` windows: the sum of ``kh·kw`` strided views
    (row-major, like the kernel), divided once."""
    kh, kw = args[0]
    ho, wo = x.shape[2] // kh, x.shape[3] // kw
    views = [x[..., a:a + ho * kh:kh, b:b + wo * kw:kw] for a in range(kh) for b in range(kw)]
    total = views[0].new_empty(views[0].shape)  # contiguous, whatever x's layout
    if len(views) > 1:  # the first addition writes it (rather than a copy of the first view, then an addition)
        torch.add(views[0], views[1], out=total)
    else:
        total.copy_(views[0])
    for view in views[2:]:
        total.add_(view)
    return total.div_(_divisor(args))


def window_average_backward(grad: torch.Tensor, shape: torch.Size, args: PoolArgs) -> torch.Tensor:
    """The input gradient of :func:`window_average`: each output's gradient / divisor copied
    into its window (zeros in rows and columns no window covers)."""
    kh, kw = args[0]
    ho, wo = grad.shape[2:]
    covered = ho * kh == shape[2] and wo * kw == shape[3]
    out = grad.new_empty(shape) if covered else grad.new_zeros(shape)
    share = grad / _divisor(args)
    for a in range(kh):
        for b in range(kw):
            out[..., a:a + ho * kh:kh, b:b + wo * kw:kw] = share
    return out


class AvgPool2d(torch.autograd.Function):
    """``avg_pool2d`` whose backward keeps only the input's shape (it needs no values), over
    :func:`window_average` where :func:`tiles` holds."""

    @staticmethod
    def forward(ctx, x, args: PoolArgs):  # type: ignore[override]
        ctx.args, ctx.shape, ctx.tiles = args, x.shape, tiles(x, args)
        return window_average(x, args) if ctx.tiles else F.avg_pool2d(x, *args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.tiles:
            return window_average_backward(grad, ctx.shape, ctx.args), None
        shape_only = grad.new_zeros(()).expand(ctx.shape)
        return torch.ops.aten.avg_pool2d_backward(grad.contiguous(), shape_only, *ctx.args), None


def avg_pool2d(x: torch.Tensor, args: PoolArgs) -> torch.Tensor:
    """``F.avg_pool2d(x, *args)``, through :class:`AvgPool2d` when it needs a graph."""
    if x.dim() == 4 and torch.is_grad_enabled() and x.requires_grad:
        return AvgPool2d.apply(x, args)
    return window_average(x, args) if tiles(x, args) else F.avg_pool2d(x, *args)
