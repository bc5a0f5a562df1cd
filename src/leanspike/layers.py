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

import torch
import torch.nn.functional as F
from torch import nn

from .state import Stateful


# --------------------------------------------------------------------------------------
# Per-step batch norm
# --------------------------------------------------------------------------------------
class _StepBatchNorm:
    """Mixin: per-step batch norm plus a vectorised ``forward_sequence``.

    Calling the module on one step ``[B, C, ...]`` is exactly ``nn.BatchNorm``: that
    step's batch statistics normalise it (training) and update the running statistics
    once. Over a sequence the affine parameters are shared by all steps while every step
    has its own statistics, which is what SLTT needs (it back-propagates each step on its
    own) and what "BN through time" (statistics over all T·B samples) is not.
    """

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ``[T, B, C, ...]`` as T calls of ``forward`` would, in one op.

        Running statistics (and ``num_batches_tracked``) end up exactly where T
        sequential calls would leave them.
        """
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        if x.dim() < 3:
            raise ValueError(f"forward_sequence expects [T, B, C, ...], got shape {tuple(x.shape)}")
        bn._check_input_dim(x[0])
        steps, batch, channels = x.shape[:3]
        if channels != bn.num_features:
            raise ValueError(f"expected {bn.num_features} channels at dim 2, got {channels}")
        use_batch_stats = bn.training or not bn.track_running_stats
        if not use_batch_stats:  # eval with running statistics: every step alike
            flat = x.reshape(steps * batch, *x.shape[2:])
            return F.batch_norm(flat, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                False, 0.0, bn.eps).reshape(x.shape)
        # [T, B, C, L] -> [B, T·C, L]: each (step, channel) pair becomes one BN channel,
        # so the fused kernel computes per-step statistics (and a lean backward).
        rest = x.shape[3:]
        grouped = x.reshape(steps, batch, channels, -1).transpose(0, 1).reshape(batch, steps * channels, -1)
        weight = bn.weight.repeat(steps) if bn.weight is not None else None
        bias = bn.bias.repeat(steps) if bn.bias is not None else None
        out = F.batch_norm(grouped, None, None, weight, bias, True, 0.0, bn.eps)
        out = out.reshape(batch, steps, channels, -1).transpose(0, 1).reshape(steps, batch, channels, *rest)
        if bn.training and bn.track_running_stats:
            self._update_running_stats(grouped.detach().reshape(batch, steps, channels, -1))
        return out

    @torch.no_grad()
    def _update_running_stats(self, x: torch.Tensor) -> None:
        """``x`` ``[B, T, C, L]``: apply T sequential running-stat updates."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        count = x.shape[0] * x.shape[3]
        if count < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got {count}")
        var, mean = torch.var_mean(x, dim=(0, 3), correction=1)  # [T, C], unbiased like nn.BatchNorm
        assert bn.running_mean is not None and bn.running_var is not None
        assert bn.num_batches_tracked is not None
        for t in range(x.shape[1]):
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean[t].to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var[t].to(bn.running_var.dtype), alpha=factor)


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

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def reset_state(self) -> None:
        self.mask = None

    def detach_state(self) -> None:  # the mask carries no autograd history
        pass

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def _draw(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        keep = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - self.p)
        return keep / (1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = self.mask_shape(x)
        if self.mask is None:
            self.mask = self._draw(shape, x)
        elif tuple(self.mask.shape) != shape:
            raise ValueError(f"{type(self).__name__}: step shaped {tuple(x.shape)} does not match the "
                             f"sequence's mask {tuple(self.mask.shape)}; reset_state() between sequences")
        return x * self.mask

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[T, B, ...]``: one mask for the whole sequence (same as T calls)."""
        if not self.training or self.p == 0.0:
            return x
        if self.mask is None:
            self.mask = self._draw(self.mask_shape(x[0]), x)
        return x * self.mask


class SequenceDropout2d(SequenceDropout):
    """Channel dropout (whole feature maps) with one mask per sequence; steps ``[B, C, H, W]``."""

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() != 4:
            raise ValueError(f"SequenceDropout2d expects steps shaped [B, C, H, W], got {tuple(x.shape)}")
        return (x.shape[0], x.shape[1], 1, 1)
