"""A per-step batch norm followed by an LIF layer, over a sequence, saving one tensor.

Run apart, the two keep two floats per neuron and step for backward: the norm its input
``x`` (:class:`~leanspike.layers.StepNorm`), the neuron its potentials ``u``
(:class:`~leanspike.neuron.LIFSequence`). Both are functions of the norm's output ``y``:
``u`` is the neuron's forward recurrence over ``y`` (recomputed in backward with the same
operations, so bit for bit), and the normalised input is ``(y − β) / γ`` per channel. So
:class:`NormLIF` keeps ``y`` (and the initial carry, one step, if there is one) and
nothing else: over T steps about half of what the pair kept.

The rebuilt normalised input differs from the original by rounding, amplified by
``1 + |β/γ|``; :func:`applies` takes the pair only where every channel has
``|β| ≤`` :data:`MAX_SHIFT_RATIO` ``· |γ|`` (at most 9 roundings in float32), and
otherwise the two run apart. It also takes only sequences of two steps or more: for one
step (SLTT's) ``y`` and the carry are as many values as ``x`` and ``u``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import lif_compiled
from .compact import mark_binary
from .layers import (SequenceDropout, check_norm_sequence, is_step_norm, step_norm_backward, step_norm_forward,
                     update_running_stats)
from .neuron import LIF, Dynamics, compiled_lif_enabled, lif_backward, lif_forward, lif_potentials

#: largest ``|β| / |γ|`` of any channel for which the norm's input is rebuilt from its output
MAX_SHIFT_RATIO = 8.0


def applies(bn: nn.Module, lif: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``lif(bn(x))`` over ``x`` ``[T, B, C, ...]`` can run as :class:`NormLIF`: training
    statistics, an affine norm whose input can be rebuilt, float32/64, T ≥ 2, a graph to build."""
    if not (is_step_norm(bn) and type(lif) is LIF and torch.is_grad_enabled()):
        return False
    norm: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    weight, bias = norm.weight, norm.bias
    if weight is None or bias is None or not (norm.training or not norm.track_running_stats):
        return False
    if x.dim() < 3 or x.shape[0] < 2 or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        return False
    if not (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return False
    if lif.carry is not None and lif.carry.shape != x.shape[1:]:  # type: ignore[union-attr]
        return False
    with torch.no_grad():
        scale = weight.abs()
        return bool(((scale * MAX_SHIFT_RATIO >= bias.abs()) & (scale > 0)).all())


def norm_lif(bn: nn.Module, lif: LIF, x: torch.Tensor, dropout: SequenceDropout | None = None) -> torch.Tensor:
    """``lif.forward_sequence(norm_sequence(bn, x))`` through :class:`NormLIF` (same values,
    same running statistics, same carry); :func:`applies` must hold. With ``dropout`` (a
    :class:`~leanspike.layers.SequenceDropout` after the LIF, :func:`takes_dropout`), its mask
    is applied in the same function: ``dropout.forward_sequence`` of the result, in one pass."""
    norm: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    check_norm_sequence(norm, x)
    mask = None if dropout is None else dropout.sequence_mask(x)
    spikes, lif.carry = NormLIF.apply(x, norm.weight, norm.bias, lif.carry, mask, norm, lif.dynamics())
    return mark_binary(spikes) if dropout is None else mark_binary(spikes, dropout.scale)  # type: ignore[arg-type]


def takes_dropout(dropout: nn.Module | None, x: torch.Tensor) -> bool:
    """Whether a :class:`NormLIF` over ``x`` applies ``dropout``'s mask itself: a plain
    :class:`~leanspike.layers.SequenceDropout` (one mask value per neuron) in training with
    ``p > 0``, and the compiled loops on (where the mask costs no pass of its own)."""
    return (type(dropout) is SequenceDropout and dropout.training and dropout.p > 0  # type: ignore[union-attr]
            and compiled_lif_enabled() and lif_compiled.norm_usable(x)
            and (dropout.mask is None or tuple(dropout.mask.shape) == tuple(x.shape[1:])))  # type: ignore[union-attr]


class NormLIF(torch.autograd.Function):
    """Per-step batch norm then LIF over ``[T, B, C, ...]``; saves the norm's output only."""

    @staticmethod
    def forward(ctx, x, weight, bias, carry, mask, bn, dyn: Dynamics):  # type: ignore[override]
        ctx.compiled = compiled_lif_enabled() and lif_compiled.norm_usable(x)
        if ctx.compiled:  # the pair as one compiled loop; the running statistics as T calls update them
            y, spikes, last, mean, var, invstd = lif_compiled.norm_lif_forward(x, weight, bias, carry, bn.eps, dyn,
                                                                               mask=mask)
            update_running_stats(bn, mean, var, x[0].numel() // x.shape[2])
        else:
            y, mean, invstd = step_norm_forward(x, bn)
            spikes, last = lif_forward(y, carry, dyn)
            if mask is not None:
                spikes = spikes * mask
        ctx.save_for_backward(y, carry, weight, bias, invstd, mask)
        ctx.dyn, ctx.eps = dyn, bn.eps
        ctx.set_materialize_grads(False)
        return spikes, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_last):  # type: ignore[override]
        y, carry, weight, bias, invstd, dropout_mask = ctx.saved_tensors
        dyn: Dynamics = ctx.dyn
        need = ctx.needs_input_grad
        if ctx.compiled and not (dyn.reset == "hard" and dyn.temporal_routes):
            grad_x, grad_w, grad_b, grad_first = lif_compiled.norm_lif_backward(
                y, grad_spikes, grad_last, carry, weight, bias, invstd, dyn, mask=dropout_mask)
            grad_carry = grad_first if need[3] and dyn.temporal_routes else None
            return (grad_x if need[0] else None, grad_w if need[1] else None, grad_b if need[2] else None,
                    grad_carry, None, None, None)
        if dropout_mask is not None and grad_spikes is not None:
            grad_spikes = grad_spikes * dropout_mask
        _, potentials, _ = lif_potentials(y, carry, dyn, want_spikes=False)  # the forward's u, bit for bit
        # dL/du (= dL/dy, as u = carry + y) over u's own buffer: one buffer of T steps besides the
        # incoming gradient and the input's
        grad_u = lif_backward(potentials, grad_spikes, grad_last, dyn, overwrite=True)
        del potentials
        grad_carry = grad_u[0].clone() if need[3] and dyn.temporal_routes else None
        # x − mean = (y − β) / (γ · invstd) = y·r − β·r with r = 1 / (γ · invstd), one step at a time
        channel, scratch = (-1,) + (1,) * (y.dim() - 3), torch.empty_like(y[0])

        def centred(t: int) -> torch.Tensor:
            scale = (weight * invstd[t]).reciprocal_()
            return torch.addcmul((bias * scale).neg_().view(channel), y[t], scale.view(channel), out=scratch)

        mask = [need[0], need[1], need[2]]
        grad_x, grad_w, grad_b = step_norm_backward(grad_u, y, weight, torch.zeros_like(invstd), invstd,
                                                    ctx.eps, mask, step=centred)
        return grad_x, grad_w, grad_b, grad_carry, None, None, None
