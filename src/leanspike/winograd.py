"""3×3, stride-1 convolutions by Winograd's F(2×2, 3×3) algorithm, written in PyTorch ops.

Why: SLTT back-propagates every step on its own, so its convolutions run one step's batch
at a time (8 samples in the SLTT paper's event setups). On such calls NNPACK's Winograd
kernels lose to oneDNN's direct ones, mostly because NNPACK transforms the kernels again
at every call, and oneDNN runs at about the machine's matmul rate. F(2×2, 3×3) needs 16
instead of 36 multiplications per 2×2 output tile: a call becomes 16 batched matrix
products with 2.25× fewer flops, the tile transforms are a few additions over
channels-last slices, and the transformed kernels are made once per batch
(:class:`KernelCache`) instead of once per call. The transforms' constants are 0, ±1 and
±½, so it rounds about like a direct convolution (relative 1e-7 in float32).

Notation: ``d`` is a 4×4 input tile, ``g`` the 3×3 kernel, ``y`` the 2×2 output tile;
``y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A``. The forward, the input gradient (the same products with
the transposed kernels and swapped tile components) and the weight gradient (the adjoint
of the formula in ``g``) are all here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

#: G of F(2×2, 3×3): the kernel transform
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

#: fewest input and output channels: with fewer, the transforms (∝ channels) outweigh the
#: saved products (∝ channels²): VGG-11's 64 → 128 stage on 24×24 maps ran slower, batch 8
MIN_CHANNELS = 128
#: smallest output map side: on 3×3 maps the 2×2 tiles cover 4×4 (1.26× fewer flops only)
MIN_SIDE = 6


def applies(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether ``x`` ``[N, C, H, W]`` through ``weight`` should run here: float32, a 3×3
    kernel, stride 1, padding of at most 2, channels and output map big enough."""
    return (x.dtype == torch.float32 and x.dim() == 4 and weight.dim() == 4
            and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and all(0 <= p <= 2 for p in padding) and min(weight.shape[:2]) >= MIN_CHANNELS
            and min(x.shape[2 + i] + 2 * padding[i] - 2 for i in range(2)) >= MIN_SIDE)


class KernelCache:
    """Context manager: while active, :func:`transformed` makes each weight's kernel
    transform once and reuses it until the weight changes (its version counter moves).
    The engine holds one per batch, so SLTT's T per-step calls share one transform.

    ``last_pass``: set by the engine around a backward after which these weights run no more
    (the batch's last graph, or an update follows): a backward's :func:`forget` then drops
    the entry it has read, so a layer's transforms are freed after
    its gradient instead of at the end of the batch (VGG-11's six held 42 MiB while BPTT went
    back through the first layers at T = 10). A later call only makes the transform again."""

    _active: list["KernelCache"] = []

    def __init__(self) -> None:
        self._kernels: dict[tuple[int, Callable], tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.last_pass = False

    def forget(self, weight: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Drop ``transform(weight)`` if this is a last pass (see the class)."""
        if self.last_pass:
            self._kernels.pop((id(weight), transform), None)

    def get(self, weight: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``transform(weight)``, made once while ``weight`` is unchanged."""
        if not weight.is_leaf:  # made anew at every call (e.g. standardised): nothing to reuse
            return transform(weight)
        hit = self._kernels.get((id(weight), transform))
        if hit is not None and hit[0] is weight and hit[1] == weight._version:
            return hit[2]
        kernels = transform(weight)
        self._kernels[(id(weight), transform)] = (weight, weight._version, kernels)
        return kernels

    def __enter__(self) -> "KernelCache":
        KernelCache._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        KernelCache._active.remove(self)
        self._kernels.clear()


def transformed(weight: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``transform(weight)`` (default :func:`kernel_transform`), from the innermost active
    :class:`KernelCache` if any."""
    transform = kernel_transform if transform is None else transform
    return KernelCache._active[-1].get(weight, transform) if KernelCache._active else transform(weight)


def forget(weight: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """A backward is done with ``transform(weight)`` (default :func:`kernel_transform`): in a
    last pass of the innermost active :class:`KernelCache`, drop it."""
    if KernelCache._active:
        KernelCache._active[-1].forget(weight, kernel_transform if transform is None else transform)


#: slot of each transform component: the identity, or 0 ↔ 3 swapped. Flipping a 3×3 kernel
#: reverses G's columns, which is G with its rows 0 and 3 swapped, so a convolution with the
#: flipped kernel is the same products with the tile components 0 and 3 swapped on both axes
_SLOTS = {False: (0, 1, 2, 3), True: (3, 1, 2, 0)}


def _input_transform(x: torch.Tensor, padding: tuple, th: int, tw: int, flip: bool = False) -> torch.Tensor:
    """``Bᵀ d B`` of every 4×4 input tile (stride 2): ``[16, N·th·tw, C]``, component (i, j) of
    the row transform i and the column transform j at position j·4 + i (slots swapped if ``flip``)."""
    n, c, h, w = x.shape
    ph, pw = padding
    s = _SLOTS[flip]
    xp = x.new_zeros(n, 2 * th + 2, 2 * tw + 2, c)  # channels-last, zero-padded to whole tiles
    xp[:, ph:ph + h, pw:pw + w].copy_(x.permute(0, 2, 3, 1))
    even, odd = xp[:, 0::2], xp[:, 1::2]  # rows 2r and 2r + 1, th + 1 of each
    rows = x.new_empty(4, n, th, 2 * tw + 2, c)  # Bᵀ d: d0 - d2, d1 + d2, d2 - d1, d1 - d3
    torch.sub(even[:, :th], even[:, 1:], out=rows[s[0]])
    torch.add(odd[:, :th], even[:, 1:], out=rows[s[1]])
    torch.sub(even[:, 1:], odd[:, :th], out=rows[s[2]])
    torch.sub(odd[:, :th], odd[:, 1:], out=rows[s[3]])
    even, odd = rows[:, :, :, 0::2], rows[:, :, :, 1::2]
    tiles = x.new_empty(4, 4, n, th, tw, c)  # (Bᵀ d) B, the same on columns
    torch.sub(even[:, :, :, :tw], even[:, :, :, 1:], out=tiles[s[0]])
    torch.add(odd[:, :, :, :tw], even[:, :, :, 1:], out=tiles[s[1]])
    torch.sub(even[:, :, :, 1:], odd[:, :, :, :tw], out=tiles[s[2]])
    torch.sub(odd[:, :, :, :tw], odd[:, :, :, 1:], out=tiles[s[3]])
    return tiles.view(16, n * th * tw, c)


def _kernel_matrix(like: torch.Tensor) -> torch.Tensor:
    """``K[j·4 + i, k·3 + l] = G[i, k]·G[j, l]``: ``G g Gᵀ`` of a flattened kernel, as one matrix
    (made once per dtype and device: read-only)."""
    return _kernel_matrix_for(like.dtype, like.device)


@lru_cache(maxsize=None)
@torch.inference_mode(False)  # a normal tensor even if first made under inference mode
def _kernel_matrix_for(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.tensor(_G, dtype=dtype, device=device)
    return torch.einsum("ik,jl->jikl", g, g).reshape(16, 9)


def kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """``G g Gᵀ`` of every 3×3 kernel of ``weight`` ``[O, C, 3, 3]``: ``[16, C, O]`` (a
    transposed view). Depends only on the weights, so callers may keep it while they are unchanged."""
    o, c = weight.shape[:2]
    u = _kernel_matrix(weight) @ weight.detach().reshape(o * c, 9).t()  # [16, O·C]
    return u.view(16, o, c).transpose(1, 2)


#: A of F(2×2, 3×3) (``y = Aᵀ m A``), row k for tile component k
_A = ((1.0, 0.0), (1.0, 1.0), (1.0, -1.0), (0.0, -1.0))


def _tile_matrix(like: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """``M[j·4 + i, r·2 + c] = A[i, r]·A[j, c]`` (components in their :data:`_SLOTS`): ``A d Aᵀ``
    of a flattened 2×2 tile ``d`` as one ``[16, 4]`` matrix; its transpose maps a tile's 16
    products to its 2×2 output (``Aᵀ m A``). Made once per dtype, device and ``flip`` (read-only):
    building it at every call took 2% of an SLTT iteration."""
    return _tile_matrix_for(like.dtype, like.device, flip)


@lru_cache(maxsize=None)
@torch.inference_mode(False)
def _tile_matrix_for(dtype: torch.dtype, device: torch.device, flip: bool) -> torch.Tensor:
    a = torch.tensor(_A, dtype=dtype, device=device)[list(_SLOTS[flip])]  # the slots are an involution
    return torch.einsum("ir,jc->jirc", a, a).reshape(16, 4)


#: output channels from which :func:`tiles_to_map` reorders its tiles through a channels-last copy
#: (per call on VGG-11's output shapes at 8 and 48 samples: 0.29-0.74x the time of one direct
#: copy from 128 channels; 0.93-1.08x at 64, which keep the one copy)
REORDER_MIN_CHANNELS = 128


def tiles_to_map(matrix: torch.Tensor, m: torch.Tensor, tile: int, n: int, th: int, tw: int, h_out: int,
                 w_out: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Aᵀ m A`` of every tile's products ``m`` ``[k, N·th·tw, O]`` as one matrix product with
    ``matrix`` ``[tile², k]`` over all tiles and channels (a single pass over ``m``; as additions
    over slices it took 1.4× the time on 12×12 maps), then a copy into place (two, through
    channels-last, from :data:`REORDER_MIN_CHANNELS` channels): the output ``[N, O, H, W]``,
    written into ``out`` when given."""
    o = m.shape[-1]
    r = torch.mm(matrix, m.view(matrix.shape[1], -1)).view(tile, tile, n, th, tw, o)  # [r, c, N, th, tw, O]
    whole_tiles = (tile * th, tile * tw) == (h_out, w_out)
    if whole_tiles and o >= REORDER_MIN_CHANNELS:
        # two copies whose inner loops run over the channels, then over the pixels, instead of one
        # whose inner loop is a tile's row (2 or 4 values): see REORDER_MIN_CHANNELS
        rows = r.new_empty(n, th, tile, tw, tile, o)  # [N, H, W, O]: channels-last
        rows.copy_(r.permute(2, 3, 0, 4, 1, 5))
        del r
        nchw = rows.view(n, tile * th, tile * tw, o).permute(0, 3, 1, 2)
        return nchw.contiguous() if out is None else out.copy_(nchw)
    tiled = r.permute(2, 5, 3, 0, 4, 1)  # [N, O, th, r, tw, c]
    if whole_tiles:
        if out is None:
            return tiled.reshape(n, o, h_out, w_out)
        out.view(n, o, th, tile, tw, tile).copy_(tiled)
        return out
    y = tiled.reshape(n, o, tile * th, tile * tw)[:, :, :h_out, :w_out]
    return y.contiguous() if out is None else out.copy_(y)


#: values one gathered chunk of :func:`gathered_product` holds (4 MiB in float32): whole, a BPTT
#: interval's gather (T·B samples) was a second copy of the transform's result beside it
#: (25 MiB on VGG-11's 12×12 maps at T = 10)
GATHER_VALUES = 1 << 20


def gathered_product(matrix: torch.Tensor, n: int, per_sample: int,
                     gather: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``matrix [k, j] @ gather(0, n)`` (``[j, n·per_sample]``): ``[k, n·per_sample]``. Over
    :data:`GATHER_VALUES` values (:func:`batch_parts`) it is made chunk by chunk of samples:
    ``gather(i0, i1)`` copies samples ``i0:i1`` into the product's input, and each chunk's
    product is written into its columns of the result."""
    k, j = matrix.shape
    step = batch_parts(n, j * per_sample, GATHER_VALUES)
    if step >= n:
        return torch.mm(matrix, gather(0, n))
    out = matrix.new_empty(k, n * per_sample)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        torch.mm(matrix, gather(i0, i1), out=out[:, i0 * per_sample:i1 * per_sample])
    return out


def map_to_tiles(matrix: torch.Tensor, grad: torch.Tensor, tile: int, th: int, tw: int) -> torch.Tensor:
    """``A dy Aᵀ`` of every ``tile``×``tile`` tile of the output gradient ``[N, O, H, W]``
    (zero-padded to whole tiles), the adjoint of :func:`tiles_to_map`: ``[k, N·th·tw, O]``. A
    copy into tile order and a matrix product with ``matrix`` ``[k, tile²]`` (2–2.7× faster
    than additions over slices), chunk by chunk of samples (:func:`gathered_product`)."""
    n, o, h, w = grad.shape

    def gather(i0: int, i1: int) -> torch.Tensor:
        part = grad[i0:i1]
        if (h, w) != (tile * th, tile * tw):
            part = F.pad(part, (0, tile * tw - w, 0, tile * th - h))
        g = part.new_empty(tile, tile, i1 - i0, th, tw, o)  # [r, c, N, th, tw, O]
        g.permute(2, 5, 3, 0, 4, 1).copy_(part.reshape(i1 - i0, o, th, tile, tw, tile))
        return g.view(tile * tile, -1)

    return gathered_product(matrix, n, th * tw * o, gather).view(matrix.shape[0], n * th * tw, o)


def _output_transform(m: torch.Tensor, n: int, th: int, tw: int, h_out: int, w_out: int,
                      flip: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Aᵀ m A`` of every tile's product ``m`` ``[16, N·th·tw, O]``: the output ``[N, O, H, W]``
    (:func:`tiles_to_map`)."""
    return tiles_to_map(_tile_matrix(m, flip).t(), m, 2, n, th, tw, h_out, w_out, out)


def _output_gradient_tiles(grad: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``A dy Aᵀ`` of every 2×2 tile of the output gradient: ``[16, N·th·tw, O]`` (:func:`map_to_tiles`)."""
    return map_to_tiles(_tile_matrix(grad), grad, 2, th, tw)


#: transformed values one part of :func:`conv3x3` and :func:`conv3x3_input_grad` holds at most
#: (4 MiB in float32): the transformed input, its products and their output transform hold
#: about 4× the input each, so a whole batch of BPTT's (T·B samples) raised its peak resident
#: memory by 30–60 MiB at T = 10; parts of 12-14 samples on VGG-11's 6×6 maps took no longer
TRANSFORM_PART_VALUES = 1 << 20


def batch_parts(n: int, per_sample: int, limit: int) -> int:
    """Samples per part when ``n`` samples of ``per_sample`` values each are cut into parts of at
    most ``limit`` values (at least one sample), as few and as even as they go. A call of up to
    twice the limit runs whole: each part reads all the transformed kernels again, and an SLTT
    step of 8 samples on 256-channel 12×12 maps (1.2M values) ran as parts of 7 and 1 (SLTT at
    T = 6 took 0.968× the time whole)."""
    if n * per_sample <= 2 * limit:
        return n
    cap = max(1, limit // per_sample)
    return -(-n // -(-n // cap))  # ceil(n / parts), parts = ceil(n / cap): at most cap


def in_parts(x: torch.Tensor, kernels: torch.Tensor, padding: tuple, bias: torch.Tensor | None, tile: int,
             input_transform: Callable, output_transform: Callable) -> torch.Tensor:
    """A Winograd convolution of ``x`` ``[N, C, H, W]`` with ``kernels`` ``[k, C, O]`` (transformed,
    ``k`` tile components, ``tile``×``tile`` output tiles), over parts of the batch of at most
    :data:`TRANSFORM_PART_VALUES` transformed values each: ``input_transform(x, padding, th, tw)``
    ``[k, P, C]``, one batched product, ``output_transform(m, n, th, tw, h_out, w_out, out=None)``."""
    n, c, h, w = x.shape
    k, o = kernels.shape[0], kernels.shape[-1]
    h_out, w_out = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    th, tw = -(-h_out // tile), -(-w_out // tile)
    part = batch_parts(n, k * th * tw * max(c, o), TRANSFORM_PART_VALUES)
    if part >= n:
        y = output_transform(torch.bmm(input_transform(x, padding, th, tw), kernels), n, th, tw, h_out, w_out)
    else:
        y = x.new_empty(n, o, h_out, w_out)
        for i in range(0, n, part):
            size = min(part, n - i)
            m = torch.bmm(input_transform(x[i:i + size], padding, th, tw), kernels)
            output_transform(m, size, th, tw, h_out, w_out, out=y[i:i + size])
            del m
    return y if bias is None else y.add_(bias.view(1, -1, 1, 1))


def _in_parts(x: torch.Tensor, kernels: torch.Tensor, padding: tuple, flip: bool, bias: torch.Tensor | None
              ) -> torch.Tensor:
    """F(2×2, 3×3) of ``x`` with ``kernels`` ``[16, C, O]`` (components swapped if ``flip``), in parts."""
    return in_parts(x, kernels, padding, bias, 2,
                    lambda v, p, th, tw: _input_transform(v, p, th, tw, flip),
                    lambda m, n, th, tw, h, w, out=None: _output_transform(m, n, th, tw, h, w, flip, out))


def conv3x3(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, padding: tuple) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding)`` for a 3×3 ``weight`` given as
    ``kernels = kernel_transform(weight)`` (see :func:`applies`)."""
    return _in_parts(x, kernels, padding, False, bias)


def conv3x3_input_grad(grad: torch.Tensor, kernels: torch.Tensor, padding: tuple) -> torch.Tensor:
    """``dL/dx`` of :func:`conv3x3`: the output gradient convolved with the flipped, transposed
    kernel, from the same ``kernels`` (its tile components 0 and 3 swapped, see :data:`_SLOTS`)."""
    return _in_parts(grad, kernels.transpose(1, 2), (2 - padding[0], 2 - padding[1]), True, None)


#: transformed values (input or output gradient tiles) one part of :func:`conv3x3_weight_grad`
#: holds at once (8 MiB in float32): the whole batch of a BPTT interval would need ~50 MB each;
#: 16 MiB parts let VGG-11's 12×12 stages at T = 10 (80 samples, 6.6M values) run whole, the
#: peak of BPTT's live memory (in parts 0.99× the time, interleaved)
PART_VALUES = 1 << 21


def summed_tile_products(grad: torch.Tensor, x: torch.Tensor, padding: tuple, into: torch.Tensor | None, k: int,
                         tile: int, input_transform: Callable, output_gradient_tiles: Callable) -> torch.Tensor:
    """``Σ_tiles output_gradient_tiles(dy) ⊙ input_transform(d)``: a Winograd weight gradient before
    the kernel transform's adjoint, ``[k, O, C]``, as ``k`` matrix products over the tiles, summed
    over parts of the batch of at most :data:`PART_VALUES` transformed values each. ``into``: add
    to it in place (a sum across calls, ``WeightGradSums``) and return it."""
    n, o, h_out, w_out = grad.shape
    c = x.shape[1]
    th, tw = -(-h_out // tile), -(-w_out // tile)
    part = batch_parts(n, k * th * tw * max(c, o), PART_VALUES)
    du = into
    for i in range(0, n, part):
        size = min(part, n - i)
        tiles = input_transform(x[i:i + size], padding, th, tw)  # [k, P, C]
        dm = output_gradient_tiles(grad[i:i + size], th, tw)  # [k, P, O]
        if du is None:
            du = torch.bmm(dm.transpose(1, 2), tiles)  # [k, O, C]
        else:
            du.baddbmm_(dm.transpose(1, 2), tiles)
        del tiles, dm
    assert du is not None
    return du


def weight_grad_tiles(grad: torch.Tensor, x: torch.Tensor, padding: tuple,
                      into: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)``, the weight gradient of :func:`conv3x3` before the kernel
    transform's adjoint (:func:`weight_grad_from_tiles`): ``[16, O, C]`` (:func:`summed_tile_products`)."""
    return summed_tile_products(grad, x, padding, into, 16, 2, _input_transform, _output_gradient_tiles)


def weight_grad_from_tiles(du: torch.Tensor) -> torch.Tensor:
    """``Gᵀ du G`` of :func:`weight_grad_tiles`'s ``[16, O, C]``: the weight gradient ``[O, C, 3, 3]``,
    one matrix product that writes it in that layout (no transposing copy)."""
    _, o, c = du.shape
    return torch.mm(du.view(16, o * c).t(), _kernel_matrix(du)).view(o, c, 3, 3)  # [O·C, 9]


def conv3x3_weight_grad(grad: torch.Tensor, x: torch.Tensor, padding: tuple) -> torch.Tensor:
    """``dL/dW`` of :func:`conv3x3`: ``Gᵀ [Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)] G`` (the adjoint of the
    forward in the kernel)."""
    return weight_grad_from_tiles(weight_grad_tiles(grad, x, padding))
