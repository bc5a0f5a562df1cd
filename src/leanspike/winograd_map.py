"""3×3, stride-1 convolutions over maps small enough to be one Winograd tile.

Why: the last stages of the papers' networks run 3×3 convolutions on tiny maps (VGG-11 on
48×48 events: 3×3; on 32×32 images: 2×2; ResNet-18 on 32×32: 4×4). There a direct kernel
spends most of its products on the zero padding (on a 3×3 map, 81 per channel pair and
sample, of which 49 touch the input), while F(m×m, 3×3) with the whole padded map as its one
(m + 2)×(m + 2) tile needs (m + 2)² products: 16, 25 or 36 instead of 36, 81 or 144.
The call becomes (m + 2)² batched matrix products, and the tile transforms, being linear
maps of a whole (tiny) map, are one small matrix product each. Kernels are transformed
once per batch through :class:`~leanspike.winograd.KernelCache`.

The transforms come from Toom–Cook interpolation at the points listed in :data:`POINTS`
(and infinity), built exactly in rationals: ``y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`` per axis,
as Kronecker products here. Their constants grow with m (up to 8 for m = 4), so a call
rounds about like NNPACK's Winograd kernels (relative 1e-6 in float32), not bit for bit
like a direct convolution. The weight gradient is left to the caller's kernels: in the
transformed domain it writes (m + 2)²/9 times the weight's size, which measured slower.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

from . import winograd

#: finite interpolation points per output side m (infinity is the last point of each);
#: 0, ±1, ±2 keep the transforms' constants small integers or simple fractions
POINTS = {2: (0, 1, -1), 3: (0, 1, -1, 2), 4: (0, 1, -1, 2, -2)}
#: fewest input and output channels (the transforms cost ∝ channels, the saved products ∝ channels²)
MIN_CHANNELS = 128
#: fewest samples per call: each transformed-kernel value serves N products, and the transform
#: holds (m + 2)²/9 times the weight's values, so small batches are bound by reading it (VGG-11's
#: 512-channel 3×3 maps at a batch of 8, SLTT's per-step calls: no faster than oneDNN)
MIN_BATCH = 16


def applies(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether ``x`` ``[N, C, H, W]`` through ``weight`` should run here: float32, a 3×3
    kernel, stride 1, enough channels and samples, and an output map of 2 to 4 pixels a side."""
    if not (x.dtype == torch.float32 and x.dim() == 4 and weight.dim() == 4
            and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and min(weight.shape[:2]) >= MIN_CHANNELS and x.shape[0] >= MIN_BATCH):
        return False
    return all(x.shape[2 + i] + 2 * padding[i] - 2 in POINTS for i in range(2))


def _evaluation(points: tuple, n: int) -> list[list[Fraction]]:
    """Rows ``[p⁰ … pⁿ⁻¹]`` for each finite point, then the row of infinity (the leading coefficient)."""
    rows = [[Fraction(p) ** k for k in range(n)] for p in points]
    rows.append([Fraction(int(k == n - 1)) for k in range(n)])
    return rows


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact inverse by Gauss–Jordan elimination (the evaluation matrices are invertible)."""
    n = len(matrix)
    rows = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        rows[col] = [v / lead for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[col])]
    return [r[n:] for r in rows]


@lru_cache(maxsize=None)
def transforms(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Aᵀ, G, Bᵀ)`` of F(m, 3) in float64: ``[m, m+2]``, ``[m+2, 3]``, ``[m+2, m+2]``, with
    ``y = Aᵀ[(G g) ⊙ (Bᵀ d)]`` the correlation ``y[i] = Σ_k g[k]·d[i+k]``.

    Toom–Cook for the linear convolution ``s = h * g`` is ``s = V⁻¹[(P_m h) ⊙ (P_3 g)]`` (``P_n``
    evaluates a polynomial of n coefficients at the points, ``V = P_{m+2}``); the correlation is
    its transpose in ``h``, so ``Aᵀ = P_mᵀ``, ``G = P_3`` and ``Bᵀ = V⁻ᵀ``. Each row of ``Bᵀ`` is
    scaled to integers and ``G``'s row divided by the same factor."""
    points = POINTS[m]
    a = m + 2
    bt = [list(col) for col in zip(*_inverse(_evaluation(points, a)))]  # V⁻ᵀ
    g = _evaluation(points, 3)
    for j, row in enumerate(bt):
        scale = math.lcm(*(v.denominator for v in row))
        bt[j] = [v * scale for v in row]
        g[j] = [v / scale for v in g[j]]
    at = [list(col) for col in zip(*_evaluation(points, m))]

    def tensor(rows: list[list[Fraction]]) -> torch.Tensor:
        return torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64)

    return tensor(at), tensor(g), tensor(bt)


def _matrices(sides: tuple[int, int], padding: tuple, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Aᵀ⊗Aᵀ`` ``[m_h·m_w, a_h·a_w]`` and the columns of ``Bᵀ⊗Bᵀ`` that meet the unpadded input
    ``[a_h·a_w, H·W]`` (the padding's columns multiply zeros), in ``like``'s dtype and device."""
    (at_h, _, bt_h), (at_w, _, bt_w) = transforms(sides[0]), transforms(sides[1])
    rows = [slice(p, bt.shape[1] - p) for bt, p in ((bt_h, padding[0]), (bt_w, padding[1]))]
    bt = torch.kron(bt_h[:, rows[0]], bt_w[:, rows[1]])
    return torch.kron(at_h, at_w).to(like), bt.to(like)


def kernel_transform(weight: torch.Tensor, sides: tuple[int, int]) -> torch.Tensor:
    """``G g Gᵀ`` of every 3×3 kernel of ``weight`` ``[O, C, 3, 3]`` for output maps of
    ``sides``: ``[a_h·a_w, C, O]`` (a transposed view). Depends only on the weights."""
    o, c = weight.shape[:2]
    g = torch.kron(transforms(sides[0])[1], transforms(sides[1])[1]).to(weight)  # [a², 9]
    u = g @ weight.detach().reshape(o * c, 9).t()  # [a², O·C]
    return u.view(-1, o, c).transpose(1, 2)


def transformed(weight: torch.Tensor, sides: tuple[int, int]) -> torch.Tensor:
    """:func:`kernel_transform`, made once per batch while a :class:`~leanspike.winograd.KernelCache` is active."""
    return winograd.cached(weight, ("map", *sides), lambda w: kernel_transform(w, sides))


def output_sides(x: torch.Tensor, padding: tuple) -> tuple[int, int]:
    """Output map sides of a 3×3, stride-1 convolution of ``x`` ``[N, C, H, W]``."""
    return x.shape[2] + 2 * padding[0] - 2, x.shape[3] + 2 * padding[1] - 2


def conv3x3(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, padding: tuple) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding)`` for ``kernels = kernel_transform(weight, sides)``."""
    n, c, h, w = x.shape
    sides = output_sides(x, padding)
    at, bt = _matrices(sides, padding, x)
    v = torch.mm(bt, x.reshape(n * c, h * w).t()).view(-1, n, c)  # Bᵀ d B of every map: [a², N, C]
    m = torch.bmm(v, kernels)  # [a², N, O]
    o = kernels.shape[2]
    y = torch.mm(m.view(-1, n * o).t(), at.t()).view(n, o, *sides)  # Aᵀ m A, written as [N, O, m_h, m_w]
    return y if bias is None else y.add_(bias.view(1, -1, 1, 1))


def conv3x3_input_grad(grad: torch.Tensor, kernels: torch.Tensor, padding: tuple,
                       input_size: tuple[int, int]) -> torch.Tensor:
    """``dL/dx`` of :func:`conv3x3`: the adjoint of each of its three linear steps, in reverse."""
    n, o = grad.shape[:2]
    sides = tuple(grad.shape[2:])
    at, bt = _matrices(sides, padding, grad)  # type: ignore[arg-type]
    dm = torch.mm(at.t(), grad.reshape(n * o, -1).t()).view(-1, n, o)  # [a², N, O]
    dv = torch.bmm(dm, kernels.transpose(1, 2))  # [a², N, C]
    c = kernels.shape[1]
    return torch.mm(dv.view(-1, n * c).t(), bt).view(n, c, *input_size)
