"""3×3, stride-1 convolutions by Winograd's F(4×4, 3×3) algorithm, written in PyTorch ops.

Why: a 4×4 output tile from a 6×6 input tile takes 36 products where a direct convolution
takes 144 and F(2×2, 3×3) (:mod:`leanspike.winograd`) 64 for its four 2×2 tiles. On maps of
12×12 and more that beats both on this kind of CPU: VGG-11's 256 → 256 stage on 12×12 maps,
one SLTT step of 8 samples, forward 2.6 ms against 4.4 (oneDNN) and 4.8 (F(2×2, 3×3)); its
BPTT call of 48 samples 14.6 against 25.8 and 21.2 (``bench/conv_kernels.py``). On 6×6 maps
the 4×4 tiles cover 8×8 and it loses to F(2×2, 3×3).

``leanspike.multistep`` takes it for input and weight gradients only unless told otherwise
(``WINOGRAD43_FORWARD``): a forward's rounding can flip spikes, and flips grow through a deep SNN.

Each transform is one matrix product over all tiles and channels: ``Bᵀ d B`` of a flattened
tile is ``(Bᵀ ⊗ Bᵀ)`` times it, and so on. The interpolation points are 0, ±1, ±2 and ∞, so
the constants reach 8 and 1/24: it rounds about 20× worse than a direct convolution
(relative 1e-5 of the output's largest value in float32, against 5e-7 for F(2×2, 3×3)).
The input gradient is the forward with the flipped, transposed kernel, transformed on its
own (no permutation of these points maps a kernel's transform to its flip's); the weight
gradient is the adjoint of the forward in the kernel, summable across calls before its
last transform as F(2×2, 3×3)'s is.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch

from . import winograd

#: Bᵀ, G and Aᵀ of F(4×4, 3×3) with the points 0, 1, −1, 2, −2 and ∞ (Lavin & Gray, 2016)
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((Fraction(1, 4), 0, 0), (Fraction(-1, 6), Fraction(-1, 6), Fraction(-1, 6)),
      (Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)), (Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)),
      (Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))

#: fewest input and output channels (VGG-11's 64 → 128 stage on 24×24 maps gained at 8 samples)
MIN_CHANNELS = 64
#: smallest output map side: on 6×6 maps the 4×4 tiles cover 8×8 and F(2×2, 3×3) is faster
MIN_SIDE = 8


def applies(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether ``x`` ``[N, C, H, W]`` through ``weight`` can run here: float32, a 3×3 kernel,
    stride 1, padding of at most 2, channels and output map big enough."""
    return (x.dtype == torch.float32 and x.dim() == 4 and weight.dim() == 4
            and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and all(0 <= p <= 2 for p in padding) and min(weight.shape[:2]) >= MIN_CHANNELS
            and min(x.shape[2 + i] + 2 * padding[i] - 2 for i in range(2)) >= MIN_SIDE)


@lru_cache(maxsize=None)
@torch.inference_mode(False)  # a normal tensor even if first made under inference mode
def _matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Bᵀ ⊗ Bᵀ`` [36, 36], ``G ⊗ G`` [36, 9] and ``Aᵀ ⊗ Aᵀ`` [16, 36]: each transform of a
    tile flattened row-major as one matrix (made in float64, then rounded once; read-only)."""
    def kron(a: tuple) -> torch.Tensor:
        m = torch.tensor([[float(v) for v in row] for row in a], dtype=torch.float64)
        return torch.kron(m, m).to(dtype=dtype, device=device)
    return kron(_BT), kron(_G), kron(_AT)


def _input_transform(x: torch.Tensor, padding: tuple, th: int, tw: int) -> torch.Tensor:
    """``Bᵀ d B`` of every 6×6 input tile (stride 4): ``[36, N·th·tw, C]``. A copy of the
    zero-padded input into channels-last, a gather of the tiles and a matrix product, chunk by
    chunk of samples (:func:`~leanspike.winograd.gathered_product`)."""
    n, c, h, w = x.shape
    ph, pw = padding
    hp, wp = 4 * th + 2, 4 * tw + 2

    def gather(i0: int, i1: int) -> torch.Tensor:
        xp = x.new_zeros(i1 - i0, hp, wp, c)
        xp[:, ph:ph + h, pw:pw + w].copy_(x[i0:i1].permute(0, 2, 3, 1)[:, :hp - ph, :wp - pw])
        sn, sh, sw, sc = xp.stride()
        return xp.as_strided((6, 6, i1 - i0, th, tw, c), (sh, sw, sn, 4 * sh, 4 * sw, sc)).reshape(36, -1)

    return winograd.gathered_product(_matrices(x.dtype, x.device)[0], n, th * tw * c, gather).view(36, n * th * tw, c)


def kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """``G g Gᵀ`` of every 3×3 kernel of ``weight`` ``[O, C, 3, 3]``: ``[36, C, O]`` (a transposed view)."""
    o, c = weight.shape[:2]
    u = _matrices(weight.dtype, weight.device)[1] @ weight.detach().reshape(o * c, 9).t()  # [36, O·C]
    return u.view(36, o, c).transpose(1, 2)


def flipped_kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """:func:`kernel_transform` of the flipped, transposed kernel (``[36, O, C]``): the input gradient's."""
    return kernel_transform(weight.detach().flip(2, 3).transpose(0, 1))


def _output_transform(m: torch.Tensor, n: int, th: int, tw: int, h_out: int, w_out: int,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """``Aᵀ m A`` of every tile's products ``m`` ``[36, N·th·tw, O]``: the output ``[N, O, H, W]``
    (:func:`~leanspike.winograd.tiles_to_map`)."""
    return winograd.tiles_to_map(_matrices(m.dtype, m.device)[2], m, 4, n, th, tw, h_out, w_out, out)


def conv3x3(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, padding: tuple) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding)`` for a 3×3 ``weight`` given as
    ``kernels = kernel_transform(weight)`` (see :func:`applies`)."""
    return winograd.in_parts(x, kernels, padding, bias, 4, _input_transform, _output_transform)


def conv3x3_input_grad(grad: torch.Tensor, flipped: torch.Tensor, padding: tuple) -> torch.Tensor:
    """``dL/dx`` of :func:`conv3x3`: the output gradient convolved with the flipped, transposed
    kernel, given as ``flipped = flipped_kernel_transform(weight)``."""
    return winograd.in_parts(grad, flipped, (2 - padding[0], 2 - padding[1]), None, 4, _input_transform,
                             _output_transform)


def _output_gradient_tiles(grad: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``A dy Aᵀ`` of every 4×4 tile of the output gradient ``[N, O, H, W]`` (zero-padded to
    whole tiles): ``[36, N·th·tw, O]``, the adjoint of :func:`_output_transform`."""
    return winograd.map_to_tiles(_matrices(grad.dtype, grad.device)[2].t(), grad, 4, th, tw)


def weight_grad_tiles(grad: torch.Tensor, x: torch.Tensor, padding: tuple,
                      into: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)``: the weight gradient before the kernel transform's
    adjoint (:func:`weight_grad_from_tiles`), ``[36, O, C]``; ``into``: add to it in place
    (:func:`~leanspike.winograd.summed_tile_products`)."""
    return winograd.summed_tile_products(grad, x, padding, into, 36, 4, _input_transform, _output_gradient_tiles)


def weight_grad_from_tiles(du: torch.Tensor) -> torch.Tensor:
    """``Gᵀ du G`` of :func:`weight_grad_tiles`'s ``[36, O, C]``: the weight gradient ``[O, C, 3, 3]``."""
    _, o, c = du.shape
    return torch.mm(du.view(36, o * c).t(), _matrices(du.dtype, du.device)[1]).view(o, c, 3, 3)


def conv3x3_weight_grad(grad: torch.Tensor, x: torch.Tensor, padding: tuple) -> torch.Tensor:
    """``dL/dW`` of :func:`conv3x3`."""
    return weight_grad_from_tiles(weight_grad_tiles(grad, x, padding))
