"""The LIF time loop as one Triton kernel per direction, for CUDA tensors.

On a GPU, :func:`~leanspike.neuron.lif_forward` and :func:`~leanspike.neuron.lif_backward`
issue a few small kernels per time step, and at the batch sizes of SNN training the
device then waits on the host (docs/performance.md, "GPU"). Here each thread owns a few
neurons and runs all T steps in registers: one launch forward, one backward.

The arithmetic is the equations' own, operation by operation, rounded to the tensor's
dtype after each one and without fused multiply-adds in the forward, so the spikes,
potentials and carry are those of the step-by-step path bit for bit (the tests check it).
The backward keeps the same formula (floating-point contraction allowed), so gradients
agree to rounding; it computes the surrogate derivative itself for leanspike's surrogate
classes (reading ``u`` once instead of a few passes), and takes one computed by the tensor
path for any other. Hard reset's backward with temporal routes stays on the tensor path.

Importing this module imports Triton; :mod:`leanspike.neuron` does so only when it first
meets a CUDA tensor, so ``import leanspike`` stays light and CPU machines never need it.
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache
from typing import Any

import torch
import triton
import triton.language as tl

from .surrogate import Atan, Rectangle, Sigmoid, Surrogate, Triangle

#: neurons per program, and warps per program (each thread owns BLOCK / (32·WARPS) neurons)
BLOCK, WARPS = 1024, 4
#: the reset modes' codes in the kernels (see :data:`leanspike.neuron.RESET_MODES`)
RESET_CODES = {"soft": 0, "hard": 1, "soft-unleaked": 2}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


@lru_cache(maxsize=256)
def split_constant(value: float) -> tuple[float, float, float]:
    """``value`` as three float32 numbers whose float64 sum is ``value`` exactly.

    Triton passes Python floats as float32; a float64 kernel adds the three parts back
    (each partial sum is exact), so its constants are the ones the tensor path uses.
    """
    hi = _float32(value)
    mid = _float32(value - hi)
    return hi, mid, _float32(value - hi - mid)


@triton.jit
def _constant(hi, mid, lo, COMPUTE: tl.constexpr):
    value = tl.cast(hi, COMPUTE)
    if COMPUTE == tl.float64:
        value = value + tl.cast(mid, COMPUTE) + tl.cast(lo, COMPUTE)
    return value


@triton.jit
def _round(x, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """``x`` rounded to the tensor's dtype, as a tensor operation's result is (no-op in float32/64)."""
    return x.to(DTYPE).to(COMPUTE)


@triton.jit
def _lanes(n, BLOCK: tl.constexpr):
    """This program's neurons (int64 offsets within one step) and which of them exist."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _lif_forward_kernel(currents_ptr, carry_ptr, spikes_ptr, potentials_ptr, last_ptr, steps, n,
                        decay_hi, decay_mid, decay_lo, th_hi, th_mid, th_lo,
                        RESET: tl.constexpr, HAS_CARRY: tl.constexpr, SAVE_U: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs, mask = _lanes(n, BLOCK)
    DTYPE: tl.constexpr = currents_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = tl.float64 if DTYPE == tl.float64 else tl.float32
    decay = _constant(decay_hi, decay_mid, decay_lo, COMPUTE)
    th = _constant(th_hi, th_mid, th_lo, COMPUTE)
    carry = tl.zeros([BLOCK], COMPUTE)
    if HAS_CARRY:
        carry = tl.load(carry_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    for t in tl.range(0, steps):
        x = tl.load(currents_ptr + t * n + offs, mask=mask, other=0.0).to(COMPUTE)
        u = _round(carry + x, DTYPE, COMPUTE)
        if not HAS_CARRY:  # at rest: u[0] = I[0] itself (as the tensor path copies it)
            u = tl.where(t == 0, x, u)
        s = (u >= th).to(COMPUTE)
        if SAVE_U:
            tl.store(potentials_ptr + t * n + offs, u.to(DTYPE), mask=mask)
        tl.store(spikes_ptr + t * n + offs, s.to(DTYPE), mask=mask)
        if RESET == 0:  # λ·(u − V_th·s)
            carry = _round(_round(u - th * s, DTYPE, COMPUTE) * decay, DTYPE, COMPUTE)
        elif RESET == 1:  # λ·u·(1 − s)
            carry = _round(_round(decay * u, DTYPE, COMPUTE) * (1.0 - s), DTYPE, COMPUTE)
        else:  # λ·u − V_th·s
            carry = _round(_round(decay * u, DTYPE, COMPUTE) - th * s, DTYPE, COMPUTE)
    tl.store(last_ptr + offs, carry.to(DTYPE), mask=mask)


@triton.jit
def _surrogate(x, p, q, SURROGATE: tl.constexpr, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """h(x) of :mod:`leanspike.surrogate`'s classes, rounded as their tensor operations are."""
    if SURROGATE == 0:  # Rectangle: 1(|x| < γ/2) / γ, p = γ/2, q = γ
        h = (tl.abs(x) < p).to(COMPUTE) / q
    elif SURROGATE == 1:  # Triangle: max(0, γ − |x|) / γ², p = γ, q = γ²
        h = tl.maximum(_round(p - tl.abs(x), DTYPE, COMPUTE), 0.0) / q
    elif SURROGATE == 2:  # Sigmoid: α·(1 − σ)·σ with σ = sigmoid(α·x), p = α
        z = _round(p * x, DTYPE, COMPUTE)
        sg = _round(1.0 / (1.0 + tl.exp(-z)), DTYPE, COMPUTE)
        h = p * (1.0 - sg) * sg
    else:  # Atan: (α/2) / (1 + (π/2·α·x)²), p = α/2, q = π/2·α
        y = _round(q * x, DTYPE, COMPUTE)
        h = p / _round(1.0 + _round(y * y, DTYPE, COMPUTE), DTYPE, COMPUTE)
    return _round(h, DTYPE, COMPUTE)


@triton.jit
def _lif_backward_kernel(potentials_ptr, grad_ptr, grad_spikes_ptr, grad_carry_ptr, steps, n,
                         lam_hi, lam_mid, lam_lo, k_hi, k_mid, k_lo, th_hi, th_mid, th_lo,
                         p_hi, p_mid, p_lo, q_hi, q_mid, q_lo,
                         SURROGATE: tl.constexpr, ROUTES: tl.constexpr, HAS_GRAD_SPIKES: tl.constexpr,
                         HAS_GRAD_CARRY: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _lanes(n, BLOCK)
    DTYPE: tl.constexpr = grad_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = tl.float64 if DTYPE == tl.float64 else tl.float32
    lam = _constant(lam_hi, lam_mid, lam_lo, COMPUTE)
    k = _constant(k_hi, k_mid, k_lo, COMPUTE)
    th = _constant(th_hi, th_mid, th_lo, COMPUTE)
    p = _constant(p_hi, p_mid, p_lo, COMPUTE)
    q = _constant(q_hi, q_mid, q_lo, COMPUTE)
    upstream = tl.zeros([BLOCK], COMPUTE)
    if HAS_GRAD_CARRY:
        upstream = tl.load(grad_carry_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    for i in tl.range(0, steps):
        t = steps - 1 - i
        if SURROGATE < 0:  # h given in grad_ptr (a surrogate of the user's own)
            h = tl.load(grad_ptr + t * n + offs, mask=mask, other=0.0).to(COMPUTE)
        else:
            u = tl.load(potentials_ptr + t * n + offs, mask=mask, other=0.0).to(COMPUTE)
            h = _surrogate(_round(u - th, DTYPE, COMPUTE), p, q, SURROGATE, DTYPE, COMPUTE)
        gs = tl.zeros([BLOCK], COMPUTE)
        if HAS_GRAD_SPIKES:
            gs = tl.load(grad_spikes_ptr + t * n + offs, mask=mask, other=0.0).to(COMPUTE)
        if ROUTES:
            # dL/du[t] = h·(dL/ds[t] − k·dL/du[t+1]) + λ·dL/du[t+1]; at the last step without a
            # carry gradient, dL/du[t+1] = 0 (the tensor path's ``upstream is None``)
            g = _round(h * _round(gs - k * upstream, DTYPE, COMPUTE), DTYPE, COMPUTE)
            g = _round(g + lam * upstream, DTYPE, COMPUTE)
            upstream = g
        else:  # no temporal routes (SLTT): every step's own dL/ds·h
            g = _round(h * gs, DTYPE, COMPUTE)
        tl.store(grad_ptr + t * n + offs, g.to(DTYPE), mask=mask)


def usable(tensor: torch.Tensor) -> bool:
    """True when the kernels take ``tensor``: a non-empty floating tensor on a CUDA device."""
    return tensor.is_cuda and tensor.dtype in DTYPES and tensor.numel() > 0


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def lif_forward(currents: torch.Tensor, carry: torch.Tensor | None, decay: float, v_threshold: float,
                reset: str, potentials: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract of :func:`leanspike.neuron.lif_forward` (``carry`` shaped like one step)."""
    currents = currents.contiguous()
    steps = currents.shape[0]
    n = currents.numel() // steps
    spikes = torch.empty_like(currents)
    last = currents.new_empty(currents.shape[1:])
    if carry is not None:
        carry = carry.to(currents.dtype).contiguous()
    if potentials is not None and not potentials.is_contiguous():
        raise ValueError("potentials must be contiguous")
    _lif_forward_kernel[_grid(n)](
        currents, carry if carry is not None else currents, spikes,
        potentials if potentials is not None else spikes, last, steps, n,
        *split_constant(decay), *split_constant(v_threshold),
        RESET=RESET_CODES[reset], HAS_CARRY=carry is not None, SAVE_U=potentials is not None,
        BLOCK=BLOCK, num_warps=WARPS, enable_fp_fusion=False)
    return spikes, last


def _surrogate_code(surrogate: Surrogate) -> tuple[int, float, float]:
    """The kernel's code and constants (p, q) for ``surrogate``; -1 for other classes."""
    kind = type(surrogate)
    if kind is Rectangle:
        return 0, surrogate.width / 2, surrogate.width
    if kind is Triangle:
        return 1, surrogate.width, surrogate.width * surrogate.width
    if kind is Sigmoid:
        return 2, surrogate.alpha, 0.0
    if kind is Atan:
        return 3, surrogate.alpha / 2, math.pi / 2 * surrogate.alpha
    return -1, 0.0, 0.0


def lif_backward(potentials: torch.Tensor, grad_spikes: torch.Tensor | None, grad_carry: torch.Tensor | None,
                 dyn: Any) -> torch.Tensor:
    """The contract of :func:`leanspike.neuron.lif_backward` (``dyn``: its ``Dynamics``) for the
    soft resets, or any reset without temporal routes: ``dL/du`` of every step."""
    if dyn.reset == "hard" and dyn.temporal_routes:
        raise ValueError("the kernel takes hard reset only without temporal routes")
    potentials = potentials.contiguous()
    steps = potentials.shape[0]
    n = potentials.numel() // steps
    code, p, q = _surrogate_code(dyn.surrogate)
    lam, th = dyn.decay, dyn.v_threshold
    k = dyn.reset_weight
    if code < 0:
        grad = dyn.surrogate.derivative_(potentials - th)
    else:
        grad = torch.empty_like(potentials)
    if grad_spikes is not None:
        grad_spikes = grad_spikes.to(grad.dtype).contiguous()
    if grad_carry is not None and dyn.temporal_routes:
        grad_carry = grad_carry.to(grad.dtype).expand(grad.shape[1:]).contiguous()
    else:
        grad_carry = None
    _lif_backward_kernel[_grid(n)](
        potentials, grad, grad_spikes if grad_spikes is not None else grad,
        grad_carry if grad_carry is not None else grad, steps, n,
        *split_constant(lam), *split_constant(k), *split_constant(th), *split_constant(p), *split_constant(q),
        SURROGATE=code, ROUTES=dyn.temporal_routes, HAS_GRAD_SPIKES=grad_spikes is not None,
        HAS_GRAD_CARRY=grad_carry is not None, BLOCK=BLOCK, num_warps=WARPS)
    return grad
