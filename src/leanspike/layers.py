"""Per-time-step building blocks for spiking networks.

Every module here is called once per time step on ``[B, ...]``, like the rest of a
leanspike model. Where a future multi-step engine could process a whole sequence
``[T, B, ...]`` at once, a ``forward_sequence`` method gives the identical result.

- :class:`StepBatchNorm1d`/:class:`StepBatchNorm2d`: batch norm whose statistics come
  from one time step (SLTT supplement H.1): online methods cannot wait for all T steps.
- :class:`WSConv2d`/:class:`WSLinear` and :class:`Scale`: scaled weight standardisation,
  the data-independent replacement for batch norm (NF-ResNets; SLTT supplement H.1).
- :class:`SequenceDropout`/:class:`SequenceDropout2d`: one dropout mask per sequence,
  shared by all of its time steps.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .compact import binary_scale, mark_binary
from .state import Stateful


# --------------------------------------------------------------------------------------
# Per-step batch norm
# --------------------------------------------------------------------------------------
def step_norm_forward(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm,
                      step: Callable[[int], torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """Normalise each step of ``x`` ``[T, B, C, ...]`` with its own batch statistics, exactly as T
    calls of ``bn`` in training would (the same kernel, the same running-statistics updates).

    ``step(t)``, when given, produces step t's input on demand (``x`` then only gives the
    shape, dtype and device), so that only one step of it exists at a time.
    Returns the output and the per-step ``mean`` and ``1/sqrt(var + eps)`` (``[T, C]``).
    """
    steps, channels = x.shape[0], x.shape[2]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    stats = out.new_empty((2, steps, channels), dtype=bn.weight.dtype if bn.weight is not None else x.dtype)
    track = bn.training and bn.track_running_stats
    factors = running_factors(bn, steps)
    for t in range(steps):
        factor = factors[t] if factors else 0.0
        running = (bn.running_mean, bn.running_var) if track else (None, None)
        # contiguous: on the CPU the ``.out`` kernel misreads other layouts (channels-last,
        # transposed, stride-0 views) and then leaves the statistics unwritten
        torch.ops.aten.native_batch_norm.out((x[t] if step is None else step(t)).contiguous(), bn.weight, bn.bias,
                                            *running, True, factor, bn.eps, out=out[t], save_mean=stats[0, t],
                                            save_invstd=stats[1, t])
    return out, stats[0], stats[1]


def running_factors(bn: nn.modules.batchnorm._BatchNorm, steps: int) -> list[float] | None:
    """The momentum each of ``steps`` training calls of ``bn`` updates its running statistics
    with, counting them in ``num_batches_tracked`` as those calls would; None when ``bn``
    keeps no running statistics (or is not training)."""
    if not (bn.training and bn.track_running_stats):
        return None
    counted = bn.num_batches_tracked is not None
    if bn.momentum is not None:
        if counted:
            bn.num_batches_tracked.add_(steps)  # type: ignore[union-attr]  # one addition instead of T
        return [bn.momentum] * steps
    factors = []
    for _ in range(steps):  # cumulative average: step t's weight is 1 / its count
        if counted:
            bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        factors.append(1.0 / float(bn.num_batches_tracked) if counted else 0.0)  # type: ignore[arg-type]
    return factors


def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                         count: int) -> None:
    """Update ``bn``'s running statistics as one training call per step would, from each step's
    batch ``mean`` and biased ``var`` (``[T, C]``) over ``count`` values per channel."""
    factors = running_factors(bn, mean.shape[0])
    if factors is None:
        return
    unbiased = var * (count / (count - 1))
    with torch.no_grad():
        for t, factor in enumerate(factors):
            bn.running_mean.mul_(1 - factor).add_(mean[t], alpha=factor)  # type: ignore[union-attr]
            bn.running_var.mul_(1 - factor).add_(unbiased[t], alpha=factor)  # type: ignore[union-attr]


def step_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                       invstd: torch.Tensor, eps: float, mask: list[bool],
                       step: Callable[[int], torch.Tensor] | None = None):
    """Batch-norm backward of every step (the kernel ``nn.BatchNorm`` uses); weight/bias grads summed.
    ``step(t)``, when given, produces step t's input on demand (``x`` then only gives the shape,
    dtype and device), so that only one step of it exists at a time."""
    steps, channels = x.shape[0], x.shape[2]
    grad_x = torch.empty_like(x) if mask[0] else None
    rows = mean.new_empty((2, steps, channels))
    for t in range(steps):
        x_t = x[t] if step is None else step(t)
        if all(mask):  # every output wanted: write them in place
            torch.ops.aten.native_batch_norm_backward.out(
                grad[t], x_t, weight, None, None, mean[t], invstd[t], True, eps, mask,
                out0=grad_x[t], out1=rows[0, t], out2=rows[1, t])  # type: ignore[index]
            continue
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad[t], x_t, weight, None, None, mean[t], invstd[t], True, eps, mask)
        for wanted, src, dst in ((mask[0], gx, grad_x[t] if grad_x is not None else None),
                                 (mask[1], gw, rows[0, t]), (mask[2], gb, rows[1, t])):
            if wanted:
                dst.copy_(src)  # type: ignore[union-attr]
    return grad_x, rows[0].sum(0) if mask[1] else None, rows[1].sum(0) if mask[2] else None


class StepNorm(torch.autograd.Function):
    """Batch norm with each step's statistics over ``[T, B, C, ...]`` (see :func:`step_norm_forward`);
    saves only ``x`` and the per-step statistics (no transposed copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn):  # type: ignore[override]
        out, mean, invstd = step_norm_forward(x, bn)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.has_bias = bn.eps, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], weight is not None and need[1], ctx.has_bias and need[2]]
        return (*step_norm_backward(grad, x, weight, mean, invstd, ctx.eps, mask), None)


def check_norm_sequence(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[T, B, C, ...]`` with ``bn``'s channels (and,
    training, more than one value per channel and step)."""
    if x.dim() < 3:
        raise ValueError(f"a sequence for {bn} must be [T, B, C, ...], got shape {tuple(x.shape)}")
    bn._check_input_dim(x[0])
    if x.shape[2] != bn.num_features:
        raise ValueError(f"expected {bn.num_features} channels at dim 2, got {x.shape[2]}")
    count = x[0].numel() // x.shape[2]
    if bn.training and count < 2:
        raise ValueError(f"expected more than 1 value per channel when training, got {count}")


def norm_sequence(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Normalise ``x`` ``[T, B, C, ...]`` as T calls of ``bn`` (one step each) would, in one pass.

    The output, the running statistics and ``num_batches_tracked`` are exactly those of
    T sequential calls (the same kernel per step); backward saves only ``x``.
    """
    check_norm_sequence(bn, x)
    if not (bn.training or not bn.track_running_stats):  # eval with running statistics: every step alike
        flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
        return F.batch_norm(flat, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            False, 0.0, bn.eps).reshape(x.shape)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, bn.weight, bn.bias)):
        return StepNorm.apply(x, bn.weight, bn.bias, bn)
    with torch.no_grad():
        return step_norm_forward(x, bn)[0]


_BN_FORWARD = nn.modules.batchnorm._BatchNorm.forward
#: PyTorch's own batch norms: a leanspike model calls them once per step, so each step is
#: normalised with its own batch statistics, as :class:`StepBatchNorm2d` does
_TORCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_step_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a batch norm that sees one time step per call and can run over a
    whole sequence with :func:`norm_sequence`: a :class:`StepBatchNorm2d` (or 1d) that keeps
    their methods, or ``nn.BatchNorm1d/2d/3d`` itself (not a subclass, whose ``forward`` may
    do something else; not ``SyncBatchNorm``, whose statistics span processes)."""
    cls = type(m)
    if isinstance(m, _StepBatchNorm):
        return cls.forward is _BN_FORWARD and cls.forward_sequence is _StepBatchNorm.forward_sequence \
            and cls.check_sequence is _StepBatchNorm.check_sequence
    return cls in _TORCH_NORMS


class _StepBatchNorm:
    """Mixin: per-step batch norm plus a vectorised ``forward_sequence``.

    Calling the module on one step ``[B, C, ...]`` is exactly ``nn.BatchNorm``: that
    step's batch statistics normalise it (training) and update the running statistics
    once. Over a sequence the affine parameters are shared by all steps while every step
    has its own statistics, which is what SLTT needs (it back-propagates each step on its
    own) and what "BN through time" (statistics over all T·B samples) is not. (A plain
    ``nn.BatchNorm2d`` called once per step does the same; this class names the intent
    and gives the method.)
    """

    def check_sequence(self, x: torch.Tensor) -> None:
        """:func:`check_norm_sequence` for this norm."""
        check_norm_sequence(self, x)  # type: ignore[arg-type]

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`norm_sequence`: T calls of ``forward`` in one pass."""
        return norm_sequence(self, x)  # type: ignore[arg-type]


class StepBatchNorm1d(_StepBatchNorm, nn.BatchNorm1d):
    """Per-time-step batch norm for ``[B, C]`` / ``[B, C, L]`` steps (see :class:`_StepBatchNorm`)."""


class StepBatchNorm2d(_StepBatchNorm, nn.BatchNorm2d):
    """Per-time-step batch norm for ``[B, C, H, W]`` steps (see :class:`_StepBatchNorm`)."""


# --------------------------------------------------------------------------------------
# Scaled weight standardisation
# --------------------------------------------------------------------------------------
def spike_gain(v_threshold: float = 1.0) -> float:
    """The gain that gives spikes unit variance: ``1 / sqrt(p·(1 − p))``.

    A spike ``s = H(z − V_th)`` of a standard-normal input ``z`` is Bernoulli with
    firing probability ``p = P(z > V_th) = ½·erfc(V_th/√2)``, so ``Var(s) = p(1 − p)``.
    Weight standardisation makes each output row of ``Ŵ`` zero-mean with unit norm, so
    the spikes' mean cancels (``Σ_j Ŵ_ij·E[s] = 0``) and ``Var(Ŵ·γs) = γ²·p(1 − p)``;
    ``γ = 1/sqrt(p(1 − p))`` keeps unit variance (SLTT supplement H.1: ``E(z) = 0``,
    ``Cov(z) = I``). For V_th = 1, p ≈ 0.1587 and γ ≈ 2.737, the "≈ 2.74" of the papers.
    """
    p = 0.5 * math.erfc(v_threshold / math.sqrt(2.0))
    return 1.0 / math.sqrt(p * (1.0 - p))


#: the constant the SLTT/OTTT networks multiply spikes by (:func:`spike_gain` at V_th = 1, rounded)
SPIKE_GAIN = 2.74


class Scale(nn.Module):
    """Multiply by a constant (the spike gain after an LIF in weight-standardised nets)."""

    def __init__(self, scale: float = SPIKE_GAIN) -> None:
        super().__init__()
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def standardize_weight(weight: torch.Tensor, gain: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``gain·(W − mean)/sqrt(var·fan_in + eps)`` per output channel (row of ``W``).

    ``mean`` and the biased ``var`` run over the fan-in (every dim but the first), so
    each standardised row has zero mean and unit L2 norm (up to eps): a unit-variance
    input gives a unit-variance output whatever the weights' scale.
    """
    dims = tuple(range(1, weight.dim()))
    fan_in = weight[0].numel()
    var, mean = torch.var_mean(weight, dim=dims, keepdim=True, correction=0)
    out = (weight - mean) * torch.rsqrt(var * fan_in + eps)
    return out if gain is None else out * gain


class WSConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardisation and a learnable per-channel gain (init 1).

    No batch statistics are involved, so it works identically at every time step and
    for any batch size; put a :class:`Scale` after the LIF that feeds it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, bias: bool = True, gain: bool = True,
                 eps: float = 1e-4, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=bias, **kwargs)
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1)) if gain else None
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.gain, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class WSLinear(nn.Linear):
    """Linear layer with scaled weight standardisation and a learnable gain (init 1)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: bool = True,
                 eps: float = 1e-4) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.gain = nn.Parameter(torch.ones(out_features, 1)) if gain else None
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.gain, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.standardized_weight(), self.bias)


# --------------------------------------------------------------------------------------
# Per-sequence dropout
# --------------------------------------------------------------------------------------
class SequenceDropout(Stateful):
    """Dropout whose mask is drawn once per sequence and shared by all its time steps.

    The mask is drawn at the first step after :meth:`reset_state` (the training methods
    reset every batch) and scaled by ``1/(1 − p)``. A fresh mask at every step would
    feed the neurons a different network at each step; a shared one drops the same
    units for the whole sequence, as dropout does for a non-spiking net. Identity in
    eval mode or with ``p = 0``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.mask: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None  # the value of kept units, 1/(1 − p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def reset_state(self) -> None:
        self.mask = None

    def detach_state(self) -> None:  # the mask carries no autograd history
        pass

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def _draw(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        # uniform < keep probability: the same Bernoulli law, about twice as fast as bernoulli_ on CPU
        keep = torch.rand(shape, dtype=like.dtype, device=like.device) < 1 - self.p
        mask = keep.to(like.dtype) / (1 - self.p)
        # kept units hold exactly this value (computed by the same division), so the mask, and
        # spikes times the mask, can be saved for backward as bool (leanspike.compact)
        self._scale = torch.ones((), dtype=like.dtype, device=like.device) / (1 - self.p)
        return mark_binary(mask, self._scale)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None
        out = x * self.mask
        scale = binary_scale(x)
        if scale is not None and not isinstance(scale, torch.Tensor) and scale == 1.0:
            mark_binary(out, self._scale)  # spikes × mask ∈ {0, 1/(1 − p)}
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = self.mask_shape(x)
        if self.mask is None:
            self.mask = self._draw(shape, x)
        elif tuple(self.mask.shape) != shape:
            raise ValueError(f"{type(self).__name__}: step shaped {tuple(x.shape)} does not match the "
                             f"sequence's mask {tuple(self.mask.shape)}; reset_state() between sequences")
        return self._masked(x)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[T, B, ...]``: one mask for the whole sequence (same as T calls)."""
        if not self.training or self.p == 0.0:
            return x
        self.sequence_mask(x)
        return self._masked(x)

    def sequence_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mask for ``x`` ``[T, B, ...]`` (drawn now if this sequence has none yet), for
        callers that apply it themselves (:func:`leanspike.norm_lif.norm_lif`); training only."""
        if self.mask is None:
            self.mask = self._draw(self.mask_shape(x[0]), x)
        return self.mask

    @property
    def scale(self) -> torch.Tensor | None:
        """The value of kept units, ``1/(1 − p)``, once a mask is drawn."""
        return self._scale


class SequenceDropout2d(SequenceDropout):
    """Channel dropout (whole feature maps) with one mask per sequence; steps ``[B, C, H, W]``."""

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() != 4:
            raise ValueError(f"SequenceDropout2d expects steps shaped [B, C, H, W], got {tuple(x.shape)}")
        return (x.shape[0], x.shape[1], 1, 1)
