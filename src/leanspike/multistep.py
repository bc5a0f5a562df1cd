"""Running a model over several time steps at once, layer by layer.

A leanspike model is a sequence of per-step modules, and each module's state depends
only on its own input history, so a run over steps ``t0 … t1`` may go layer by layer
instead of step by step: every layer takes all the steps ``[t, B, ...]`` before the next
one starts. The results are the same (up to float rounding); the work is batched and
what is saved for backward shrinks:

- convolutions, linear layers, pooling and flattening see ``t·B`` samples in one call;
- a per-step batch norm (``StepBatchNorm2d``, or PyTorch's own ``BatchNorm2d``, which a model
  calls once per step) normalises each step with that step's statistics in one pass
  and saves only its input (:class:`~leanspike.layers.StepNorm`);
- an LIF runs its time loop inside one autograd function that saves ``u`` only
  (:class:`~leanspike.neuron.LIFSequence`); after a per-step batch norm, the pair keeps
  only the norm's output, from which backward rebuilds both (:mod:`~leanspike.norm_lif`);
- a convolution fed by the engine's input, followed by a per-step batch norm, saves
  nothing new: its output is recomputed in backward from the input, which is kept
  anyway (:class:`InputConvNorm`); with an LIF after the norm, over two steps or more on
  the CPU, the LIF's ``u`` is recomputed too (:class:`InputConvNormLIF`);
- poolings, views and flattenings of spikes are marked as recomputable from the
  spikes (:func:`~leanspike.compact.mark_derived`), so what they hand to the next layer
  is saved as the spikes' packed bits plus the recipe.

:func:`supports_sequence` says whether a module can run this way: an ``nn.Sequential``
whose children are all of the known kinds, without hooks or patched ``forward``
(e.g. OTTT's traced layers); anything else keeps the step-by-step path.

The engine takes this path for intervals of two steps or more, and for one-step intervals
(SLTT's) on inputs big enough to pay for it (:func:`pays_off`); the kernels each convolution
pass takes depend on its size and width (the constants below say where each was measured).
"""

from __future__ import annotations

import contextlib
import math
import sys
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import lif_compiled, norm_lif, pooling, winograd, winograd_f43
from .compact import mark_binary, mark_derived
from .layers import (Scale, SequenceDropout, WSConv2d, WSLinear, is_step_norm, norm_sequence, step_norm_forward,
                     update_running_stats)
from .measure import cpu_capability
from .neuron import LIF, Dynamics, compiled_lif_enabled, lif_backward, lif_forward, lif_potentials

#: modules that treat every sample on its own: they run on ``[t·B, ...]`` unchanged
_SAMPLEWISE = {cls.forward for cls in (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, WSConv2d, WSLinear, Scale, nn.Identity,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh,
    nn.GELU, nn.SiLU)}
#: parameter-free deterministic modules: their output is recomputed in backward from a marked input
_PURE = (nn.Identity, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d,
         nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
         nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

#: False: the engine runs every interval step by step (to compare the two paths, or to debug)
ENABLED = True
#: the most consecutive steps without a graph the engine runs as one chunk when the model is cut
#: into local blocks: bounds the block outputs a chunk holds (each part's temporaries are bounded
#: by NO_GRAD_PART_VALUES). One block: no limit (SLTT-K (K = 1), T = 10: 0.987×, 14/20 rounds)
NO_GRAD_CHUNK = 8
#: samples (steps × batch) one layer call takes at most: beyond it kernels gain little while
#: every layer's temporaries grow with it
MAX_ROWS = 256
#: on the CPU, input values (steps × batch × one sample's input) one layer-by-layer part of a run
#: without a graph takes at most: parts whose layers' outputs stay near the caches and the heap
#: run faster than one call over every step, and hold less. VGG-11 on 2×48×48 events, interleaved
#: in one process against parts of up to 8 steps: forward only at batch 8 0.93× the time at T = 6
#: (2 × 3 steps), 0.89× at T = 10, 0.94–0.96× at batch 16 and 32; SLTT-K (K = 1) at T = 10 0.99×.
#: Intervals with a graph keep whole (up to MAX_ROWS): split, each part keeps the state it starts
#: from, so BPTT kept 73 MiB instead of 63 (batch 8, T = 10, 2 parts) for 0.94× the time
NO_GRAD_PART_VALUES = 1 << 17


#: values in one step of the input (batch × features) below which a one-step interval (SLTT's,
#: SLTT-K's graph steps) runs step by step: over one step the functions here batch nothing, and
#: on small inputs their Python and recomputation cost more than their kernels save. SLTT,
#: T = 6, layer by layer against step by step, interleaved in one process: the 8×8 digits CNN
#: at batch 32 (2 048 values) 30.9 against 21.7 ms; the same CNN on 28×28 at batch 64 (50 176)
#: 154.7 against 149.0 ms, a tie (and less memory); VGG-11 on 2×48×48 events at batch 8
#: (36 864) 985 against 1 301 ms
ONE_STEP_MIN_VALUES = 1 << 14


def pays_off(steps: int, step_values: int) -> bool:
    """Whether an interval of ``steps`` whose input has ``step_values`` values per step should
    run layer by layer (when the model supports it): always over two steps or more."""
    return steps > 1 or step_values >= ONE_STEP_MIN_VALUES


@contextlib.contextmanager
def one_step_path(layered: bool) -> Iterator[None]:
    """While active, one-step intervals run layer by layer (``layered``) or step by step whatever
    their input's size: the memory planner measures at batches of 1 and 2 what a run at a
    bigger batch will keep, so it must take that run's path."""
    global ONE_STEP_MIN_VALUES
    old = ONE_STEP_MIN_VALUES
    ONE_STEP_MIN_VALUES = 0 if layered else sys.maxsize
    try:
        yield
    finally:
        ONE_STEP_MIN_VALUES = old


def chunk_steps(steps: int, batch: int, max_rows: int = MAX_ROWS) -> int:
    """Steps per layer-by-layer part when an interval of ``steps`` is cut into balanced parts
    of at most ``max_rows`` samples (at least one step each)."""
    parts = max(1, -(-steps * batch // max_rows))
    return max(1, -(-steps // parts))


def part_steps(inputs: torch.Tensor, graph: bool) -> int:
    """Steps per layer-by-layer part of ``inputs`` ``[T, B, ...]``: at most :data:`MAX_ROWS`
    samples, and without a graph on the CPU at most :data:`NO_GRAD_PART_VALUES` input values."""
    rows = MAX_ROWS
    if not graph and inputs.device.type == "cpu":
        rows = min(rows, max(1, NO_GRAD_PART_VALUES // max(1, math.prod(inputs.shape[2:]))))
    return chunk_steps(inputs.shape[0], inputs.shape[1], rows)


def _plain(m: nn.Module) -> bool:
    """No hooks and no instance-level ``forward`` (they expect one call per step)."""
    return not ("forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks
                or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as mod

    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks
                or getattr(mod, "_global_backward_pre_hooks", None))


def _supported_child(m: nn.Module) -> bool:
    if not _plain(m):
        return False
    cls = type(m)
    if isinstance(m, nn.Sequential):
        return _supported_sequential(m)
    if isinstance(m, LIF):
        return cls.forward is LIF.forward and cls.forward_sequence is LIF.forward_sequence
    if is_step_norm(m):
        return True
    if isinstance(m, SequenceDropout):
        return cls.forward is SequenceDropout.forward and cls.forward_sequence is SequenceDropout.forward_sequence
    if isinstance(m, nn.Flatten) and m.start_dim == 0:
        return False  # would merge the batch dim
    return cls.forward in _SAMPLEWISE


def _supported_sequential(seq: nn.Sequential) -> bool:
    children = list(seq._modules.values())
    return all(c is not None and _supported_child(c) for c in children)


def each_module_once(*trees: nn.Module) -> bool:
    """No module appears twice anywhere in ``trees``: layer by layer, a module used twice
    (a norm or a neuron shared by two places) would see its steps in another order."""
    ids = [id(m) for tree in trees for _, m in tree.named_modules(remove_duplicate=False)]
    return len(set(ids)) == len(ids)


def _autocast() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def supports_sequence(module: nn.Module | None) -> bool:
    """True when ``module`` can run layer by layer over ``[t, B, ...]`` (see module doc). Not
    under autocast: the functions here save and recompute tensors for backward, which runs
    outside autocast, in the forward's dtypes; the step-by-step path is plain PyTorch there."""
    if module is None:
        return ENABLED
    return ENABLED and isinstance(module, nn.Sequential) and _plain(module) and not _global_hooks() \
        and not _autocast() and _supported_sequential(module) and each_module_once(module)


# ------------------------------------------------------------------------------ input conv + BN
def _unfold(x: torch.Tensor, weight: torch.Tensor, conf: tuple) -> torch.Tensor:
    stride, padding, dilation = conf[:3]
    return F.unfold(x, weight.shape[2:], dilation, padding, stride)


def _conv_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple,
               cols: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of one step ``x`` ``[B, C, H, W]``; with few input channels and many outputs
    (:func:`_unfolds`), as one matrix product over the unfolded input (oneDNN pads few input
    channels to a whole block in the default layout, so 2 channels cost like 16, and its
    channels-last result needs a copy back: both cost more than the product, which writes the
    output in place). Grouped convs keep oneDNN, channels-last; others the plain conv.
    ``cols``: ``x`` already unfolded. Off the CPU (cuDNN), the plain conv: unfold there
    launches one kernel per sample."""
    if conf[3] != 1 and x.device.type == "cpu":
        cl = torch.channels_last
        z = F.conv2d(x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl), bias, *conf)
        return z.contiguous()
    if not _takes_unfold(x, weight, conf):
        return F.conv2d(x, weight, bias, *conf)
    cols = _unfold(x, weight, conf) if cols is None else cols  # [B, C·kh·kw, L]
    w = weight.reshape(weight.shape[0], -1)
    out = torch.bmm(w.expand(cols.shape[0], *w.shape), cols)  # [B, O, L], written in place (matmul transposes)
    if bias is not None:
        out += bias[:, None]
    return out.view(x.shape[0], weight.shape[0], *_out_size(x, weight, conf))


def _out_size(x: torch.Tensor, weight: torch.Tensor, conf: tuple) -> list[int]:
    stride, padding, dilation = conf[:3]
    return [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
            for i in range(2)]


def _conv_step_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool, conf: tuple,
                        mask: list[bool], cols: torch.Tensor | None = None) -> tuple:
    """``(dx, dW, db)`` of :func:`_conv_step` for the outputs ``mask`` asks for."""
    stride, padding, dilation, groups = conf
    if not _takes_unfold(x, weight, conf):  # as the forward ran: oneDNN channels-last (grouped),
        # or the plain kernel (oneDNN, cuDNN) as given
        if groups != 1 and x.device.type == "cpu":
            grad, x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (grad, x, weight))
        return torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding), list(dilation),
            False, [0, 0], groups, [mask[0], mask[1], has_bias and mask[2]])
    k = weight.shape[2:]
    g = grad.reshape(grad.shape[0], grad.shape[1], -1)  # [B, O, L]
    w = weight.reshape(weight.shape[0], -1)  # [O, C·kh·kw]
    dx = dw = db = None
    if mask[0]:
        dx = F.fold(torch.matmul(w.t(), g), x.shape[2:], k, dilation, padding, stride)
    if mask[1]:
        cols = _unfold(x, weight, conf) if cols is None else cols
        dw = torch.bmm(g, cols.transpose(1, 2)).sum(0).view_as(weight)
    if has_bias and mask[2]:
        db = g.sum((0, 2))
    return dx, dw, db


def _conv_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        bn_weight: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor, conf: tuple,
                        eps: float, need: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients of the conv's weight and bias and of the norm's weight and bias (``need``: which)
    for ``StepNorm(conv(x))``, step by step, each step's conv output recomputed from ``x``."""
    mask = [need[0] or need[1], need[2], need[3]]
    conv_mask = [False, need[0], bias is not None and need[1]]
    rows = mean.new_empty((2, x.shape[0], mean.shape[1]))
    grads = [None, None]
    for t in range(x.shape[0]):
        cols = _unfold(x[t], weight, conf) if _takes_unfold(x, weight, conf) else None
        z = _conv_step(x[t], weight, bias, conf, cols)
        gz, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad[t], z, bn_weight, None, None, mean[t], invstd[t], True, eps, mask)
        del z
        if mask[1]:
            rows[0, t].copy_(gw)
        if mask[2]:
            rows[1, t].copy_(gb)
        if any(conv_mask):
            _, cw, cb = _conv_step_backward(gz, x[t], weight, bias is not None, conf, conv_mask, cols)
            for i, g in enumerate((cw, cb)):
                if g is not None:
                    grads[i] = g if grads[i] is None else grads[i].add_(g)  # type: ignore[union-attr]
    grad_w = None if grads[0] is None else grads[0].contiguous()
    return grad_w, grads[1], rows[0].sum(0) if mask[1] else None, rows[1].sum(0) if mask[2] else None


#: values (of float32: 16 MiB) of the conv's output that one part of :class:`InputConvNormLIF`'s
#: compiled loops holds: whole, VGG-11's 64 × 48 × 48 layer at batch 8 and T = 10 holds 47 MB in
#: each of the recomputed conv output, the potentials, dL/du and dL/dz in backward (the peak
#: bytes in use of a BPTT iteration 262 against 158 MiB for the tensor path); channels are
#: independent from the conv's output on, so the parts split them
COMPILED_PART_VALUES = 1 << 22


def _channel_parts(shape: tuple) -> list[tuple[int, int]]:
    """Channel ranges ``[(c0, c1), ...]`` of an output ``shape`` ``[T, B, C, ...]`` whose parts hold at
    most :data:`COMPILED_PART_VALUES` values (at least one channel each), balanced."""
    channels, per_channel = shape[2], math.prod(shape) // max(shape[2], 1)
    parts = max(1, min(channels, -(-per_channel * channels // COMPILED_PART_VALUES)))
    size = -(-channels // parts)
    return [(c, min(c + size, channels)) for c in range(0, channels, size)]


def _part(t: torch.Tensor | None, c0: int, c1: int, dim: int = 1) -> torch.Tensor | None:
    """Channels ``c0:c1`` of ``t`` (at ``dim``), or None."""
    return None if t is None else t.narrow(dim, c0, c1 - c0)


def _conv_steps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple) -> torch.Tensor:
    """The conv of every step of ``x`` ``[T, B, C, H, W]``, one step at a time (as the forward
    and the recomputation in backward both call it: the same values)."""
    out = x.new_empty((x.shape[0], x.shape[1], weight.shape[0], *_out_size(x[0], weight, conf)))
    for t in range(x.shape[0]):
        out[t] = _conv_step(x[t], weight, bias, conf)
    return out


def _conv_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple,
                       bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``StepNorm(conv(x))`` over ``[T, B, ...]``, one step of the conv output at a time:
    the output and the per-step mean and invstd."""
    shape = [x.shape[0], x.shape[1], weight.shape[0], *_out_size(x[0], weight, conf)]
    like = x.new_zeros(()).expand(shape)  # shape only
    return step_norm_forward(like, bn, lambda t: _conv_step(x[t], weight, bias, conf))  # type: ignore[arg-type]


class InputConvNorm(torch.autograd.Function):
    """``StepNorm(conv(x))`` for an input ``x`` that needs no gradient and is kept anyway:
    saves ``x`` (no new memory) instead of the conv output, which backward recomputes
    (the same call on the same input: the same values). Runs step by step, so that one
    step of the conv output exists at a time."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn_weight, bn_bias, conf: tuple, bn: nn.Module):  # type: ignore[override]
        out, mean, invstd = _conv_norm_forward(x, weight, bias, conf, bn)
        ctx.save_for_backward(x, weight, bias, bn_weight, mean, invstd)
        ctx.conf, ctx.eps, ctx.has_bn_bias = conf, bn.eps, bn_bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias, bn_weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        wanted = (need[1], need[2], bn_weight is not None and need[3], ctx.has_bn_bias and need[4])
        return (None, *_conv_norm_backward(grad, x, weight, bias, bn_weight, mean, invstd, ctx.conf, ctx.eps,
                                           wanted), None, None)


class InputConvNormLIF(torch.autograd.Function):
    """:class:`InputConvNorm` followed by an LIF, over two steps or more, on the CPU: saves
    the input (kept anyway) and the LIF's carry in (one step, if any) instead of the LIF's
    ``u`` (one float per neuron and step, the biggest layer's in a VGG). Backward recomputes
    the norm's output with the same calls (the conv from ``x``, the batch-norm kernel in
    training mode on it: the same values, bit for bit, on the CPU) and reruns the LIF
    recurrence over it (:func:`~leanspike.neuron.lif_forward`: the forward's ``u`` bit for bit).

    With :func:`~leanspike.neuron.compile_lif` on (a soft reset, or no temporal routes), the
    norm, the LIF and a dropout mask after it run as compiled loops
    (:mod:`leanspike.lif_compiled`) in parts of the channels (:data:`COMPILED_PART_VALUES`), and
    backward recomputes each part's conv output and normalises it with the saved statistics in
    the same compiled way."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn_weight, bn_bias, carry, mask, conf: tuple,  # type: ignore[override]
                bn: nn.Module, dyn: Dynamics):
        ctx.compiled = (compiled_lif_enabled() and bn_weight is not None and bn_bias is not None
                        and lif_compiled.norm_usable(x) and not (dyn.reset == "hard" and dyn.temporal_routes))
        if ctx.compiled:  # the norm and the LIF (and the dropout mask) as compiled loops, part by part
            shape = (x.shape[0], x.shape[1], weight.shape[0], *_out_size(x[0], weight, conf))
            spikes, last = x.new_empty(shape), x.new_empty(shape[1:])
            stats = x.new_empty((3, shape[0], shape[2]))
            for c0, c1 in _channel_parts(shape):
                _, spikes[:, :, c0:c1], last[:, c0:c1], *parts = lif_compiled.norm_lif_forward(
                    _conv_steps(x, weight[c0:c1], None if bias is None else bias[c0:c1], conf), bn_weight[c0:c1],
                    bn_bias[c0:c1], _part(carry, c0, c1), bn.eps, dyn, want_y=False, mask=_part(mask, c0, c1))
                for i, stat in enumerate(parts):
                    stats[i, :, c0:c1] = stat
            mean, var, invstd = stats
            update_running_stats(bn, mean, var, last[:, 0].numel())
        else:
            y, mean, invstd = _conv_norm_forward(x, weight, bias, conf, bn)
            spikes, last = lif_forward(y, carry, dyn)
            if mask is not None:
                spikes = spikes * mask
        ctx.save_for_backward(x, weight, bias, bn_weight, bn_bias, carry, mean, invstd, mask)
        ctx.conf, ctx.eps, ctx.dyn = conf, bn.eps, dyn
        ctx.set_materialize_grads(False)
        return spikes, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_last):  # type: ignore[override]
        x, weight, bias, bn_weight, bn_bias, carry, mean, invstd, dropout_mask = ctx.saved_tensors
        dyn: Dynamics = ctx.dyn
        need = ctx.needs_input_grad
        if ctx.compiled:
            shape = (x.shape[0], x.shape[1], weight.shape[0], *_out_size(x[0], weight, ctx.conf))
            grad_w = torch.empty_like(weight) if need[1] else None
            grad_b = torch.empty_like(bias) if bias is not None and need[2] else None
            grad_bn_w, grad_bn_b, grad_first = torch.empty_like(bn_weight), torch.empty_like(bn_bias), x.new_empty(shape[1:])
            for c0, c1 in _channel_parts(shape):  # channels are independent from the conv's output on
                z = _conv_steps(x, weight[c0:c1], None if bias is None else bias[c0:c1], ctx.conf)
                grad_z, grad_bn_w[c0:c1], grad_bn_b[c0:c1], grad_first[:, c0:c1] = lif_compiled.norm_lif_backward(
                    z, _part(grad_spikes, c0, c1, 2), _part(grad_last, c0, c1), _part(carry, c0, c1), bn_weight[c0:c1],
                    bn_bias[c0:c1], invstd[:, c0:c1], dyn, mean=mean[:, c0:c1], mask=_part(dropout_mask, c0, c1))
                del z
                _, gw, gb = _conv_step_backward(grad_z.flatten(0, 1), x.flatten(0, 1), weight[c0:c1], bias is not None,
                                                ctx.conf, [False, need[1], need[2]])
                if grad_w is not None:
                    grad_w[c0:c1] = gw
                if grad_b is not None:
                    grad_b[c0:c1] = gb
            return (None, grad_w if need[1] else None, grad_b if need[2] else None, grad_bn_w if need[3] else None,
                    grad_bn_b if need[4] else None, grad_first if need[5] and dyn.temporal_routes else None,
                    None, None, None, None)
        if dropout_mask is not None and grad_spikes is not None:
            grad_spikes = grad_spikes * dropout_mask
        y = x.new_empty((x.shape[0], x.shape[1], weight.shape[0], *_out_size(x[0], weight, ctx.conf)))
        step_stats = mean.new_empty((2, mean.shape[1]))  # the same statistics again; the saved ones are used
        for t in range(x.shape[0]):
            torch.ops.aten.native_batch_norm.out(_conv_step(x[t], weight, bias, ctx.conf).contiguous(), bn_weight,
                                                bn_bias, None, None, True, 0.0, ctx.eps, out=y[t],
                                                save_mean=step_stats[0], save_invstd=step_stats[1])
        # the forward's u, bit for bit, written over y step by step; then dL/du (= dL/dy, as
        # u = carry + y) over u: one buffer of T steps besides the incoming gradient
        _, u, _ = lif_potentials(y, carry, dyn, want_spikes=False, potentials=y)
        del y
        grad_u = lif_backward(u, grad_spikes, grad_last, dyn, overwrite=True)
        del u
        grad_carry = grad_u[0].clone() if need[5] and dyn.temporal_routes else None
        wanted = (need[1], need[2], bn_weight is not None and need[3], bn_bias is not None and need[4])
        return (None, *_conv_norm_backward(grad_u, x, weight, bias, bn_weight, mean, invstd, ctx.conf, ctx.eps,
                                           wanted), grad_carry, None, None, None, None)


def _input_conv_norm(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv`` then ``bn`` on the engine's input ``x`` can use :class:`InputConvNorm`."""
    bn_: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    return (type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros"  # type: ignore[union-attr]
            and not isinstance(conv.padding, str) and is_step_norm(bn)  # type: ignore[union-attr]
            and (bn_.training or not bn_.track_running_stats) and x.dim() == 5 and not x.requires_grad
            and torch.is_grad_enabled() and conv.weight.requires_grad)  # type: ignore[union-attr]


def input_conv_norm(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm_sequence(bn, conv over [t·B])`` through :class:`InputConvNorm`."""
    bn_: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    _check_input_conv_norm(conv, bn_, x)
    conf = (conv.stride, conv.padding, conv.dilation, conv.groups)
    return InputConvNorm.apply(x, conv.weight, conv.bias, bn_.weight, bn_.bias, conf, bn)


def _check_input_conv_norm(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> None:
    """The errors ``bn`` would raise on ``conv``'s output, raised before any work."""
    if conv.out_channels != bn.num_features:
        raise ValueError(f"expected {bn.num_features} channels, got {conv.out_channels} from {conv}")
    count = x.shape[1] * _spatial(conv, x)  # values per channel and step
    if bn.training and count < 2:
        raise ValueError(f"expected more than 1 value per channel when training, got {count}")


def _with_lif(conv: nn.Conv2d, lif: nn.Module | None, x: torch.Tensor) -> bool:
    """Whether an :class:`InputConvNorm` of ``conv`` on ``x`` ``[T, B, ...]`` may take ``lif``
    after it (:class:`InputConvNormLIF`): a plain LIF, two steps or more (for one, the carry it
    keeps is as big as ``u``), on the CPU (where recomputing the conv and the norm gives the
    forward's values bit for bit; cuDNN may pick another algorithm for the same call), and a
    carry of the step's own shape (not one to broadcast)."""
    if type(lif) is not LIF or x.shape[0] < 2 or x.device.type != "cpu":
        return False
    carry = lif.carry  # type: ignore[union-attr]
    conf = (conv.stride, conv.padding, conv.dilation)
    return carry is None or carry.shape == (x.shape[1], conv.out_channels, *_out_size(x[0], conv.weight, conf))


def input_conv_norm_lif(conv: nn.Conv2d, bn: nn.Module, lif: LIF, x: torch.Tensor,
                        dropout: SequenceDropout | None = None) -> torch.Tensor:
    """``lif.forward_sequence(input_conv_norm(conv, bn, x))`` through :class:`InputConvNormLIF`;
    with ``dropout`` (:func:`~leanspike.norm_lif.takes_dropout`), its mask applied in it too."""
    bn_: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    _check_input_conv_norm(conv, bn_, x)
    conf = (conv.stride, conv.padding, conv.dilation, conv.groups)
    mask = None if dropout is None else dropout.sequence_mask(_conv_output_like(conv, x))
    spikes, lif.carry = InputConvNormLIF.apply(x, conv.weight, conv.bias, bn_.weight, bn_.bias, lif.carry, mask, conf,
                                               bn, lif.dynamics())
    return mark_binary(spikes) if dropout is None else mark_binary(spikes, dropout.scale)  # type: ignore[arg-type]


def _conv_output_like(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A stand-in (no memory) with the shape, dtype and device of ``conv``'s output over ``x`` ``[T, B, ...]``."""
    conf = (conv.stride, conv.padding, conv.dilation)
    shape = (x.shape[0], x.shape[1], conv.out_channels, *_out_size(x[0], conv.weight, conf))
    return x.new_zeros(()).expand(shape)


def _spatial(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Output pixels per channel of ``conv`` on one sample of ``x`` ``[T, B, C, H, W]``."""
    size = 1
    for i, n in enumerate(x.shape[3:]):
        k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]  # type: ignore[index]
        size *= (n + 2 * p - d * (k - 1) - 1) // s + 1
    return size


# ------------------------------------------------------------------------------ convolution
#: NNPACK's Winograd kernels run a 3×3, stride-1 convolution about twice as fast as
#: oneDNN's direct one on this kind of CPU once a call is big enough (samples × pixels),
#: and on maps of at least 6×6; measured with 1 and 2 threads on VGG-11 layers
#: (docs/performance.md). Smaller calls keep oneDNN. Winograd rounds differently
#: (relative error ≈ 1e-5 instead of 1e-6 in float32).
WINOGRAD_MIN_ROWS = 1728
WINOGRAD_MIN_PIXELS = 36
#: ... and only for batches of at least this many samples: with 2 threads, calls of 8 (SLTT's
#: steps) ran slower through NNPACK's thread pool, and so did calls of 16 and 24 inside whole
#: iterations (interleaved, VGG-11 at batch 8: BPTT at T = 2 0.393 → 0.349 s and SLTT with 2
#: steps per backward 1.19 → 1.02 s when 16-sample calls left NNPACK; 3 steps 0.99 → 0.89 s when
#: 24-sample ones did; at 32 samples, BPTT at T = 4, a tie: 495 against 502 ms with 48 as the
#: limit; and at 32 samples AlexNet's 256-512-channel convs on 8×8 and 4×4 maps, SLTT at batch
#: 32, ran slower through it: 3.0 s per T = 6 iteration against 2.0 s with this and
#: :data:`DW_CONV_MIN_BATCH` at 48, 2.3 s step by step)
WINOGRAD_MIN_BATCH = 48
#: ... and for convolutions with at least this many input and output channels: on few channels
#: NNPACK's transforms outweigh the saved products (LeNet-1's 6 → 16 and 16 → 120, 5×5, at 768
#: samples; with NNPACK and the two picks below limited to VGG-like widths, a LeNet-1 BPTT
#: iteration at batch 128, T = 6, went from 1.4× to 0.84–0.90× the step-by-step path's time)
KERNEL_MIN_CHANNELS = 32


def _wide(weight: torch.Tensor) -> bool:
    """At least :data:`KERNEL_MIN_CHANNELS` input and output channels: the widths (VGG-11's, 64 to
    512) at which the special kernels here were measured to pay."""
    return min(weight.shape[0], weight.shape[1]) >= KERNEL_MIN_CHANNELS


def _winograd(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether NNPACK should run ``x`` (``[N, C, H, W]``) through ``weight`` (same-size output)."""
    k = weight.shape[2:]
    out = [x.shape[2 + i] + 2 * padding[i] - k[i] + 1 for i in range(2)]
    return (USE_NNPACK and stride == (1, 1) and x.dtype == torch.float32 and max(k) < 17 and _wide(weight)
            and all(p <= kk - 1 for p, kk in zip(padding, k)) and out[0] * out[1] >= WINOGRAD_MIN_PIXELS
            and x.shape[0] >= WINOGRAD_MIN_BATCH and x.shape[0] * out[0] * out[1] >= WINOGRAD_MIN_ROWS)


_NNPACK = torch._nnpack_available()
#: the widest vector instructions PyTorch's CPU kernels use on this machine ("AVX2", "AVX512", ...)
CPU_CAPABILITY = cpu_capability()
#: Whether NNPACK's kernels (:func:`_winograd`, :func:`_weight_grad_as_conv`) are taken at all.
#: NNPACK's kernels stop at AVX2, while oneDNN's direct convolutions use AVX-512 where the CPU
#: has it; the thresholds above were measured on earlier machines, where NNPACK won. On a 2-core
#: AVX-512 (and AMX) Xeon, 330 GFLOP/s fp32 matmul, VGG-11 at batch 8, T = 6, interleaved in one
#: process: BPTT took 0.835× the time without NNPACK and forward-only inference 0.786× (with
#: :data:`WINOGRAD_MAX_BATCH` too); SLTT and SLTT-K (K = 1) were unchanged (1.005×, 0.993×)
USE_NNPACK = _NNPACK and CPU_CAPABILITY != "AVX512"
#: samples from which a forward or input gradient that F(2×2, 3×3) applies to
#: (:func:`winograd.applies`) takes oneDNN instead (None: no limit). On AVX-512, oneDNN's
#: direct kernels are the faster from 16 samples (forward-only inference above; SLTT-K's
#: no-grad steps 0.97×); at SLTT's 8 it was a tie. On the earlier machines F(2×2, 3×3) beat
#: oneDNN at every batch NNPACK does not take (docs/performance.md, "Kernels")
WINOGRAD_MAX_BATCH = 16 if CPU_CAPABILITY == "AVX512" else None
#: output pixels per sample up to which F(2×2, 3×3) is taken whatever the batch. On the AVX-512
#: machine, per call at 16 to 80 samples, it took 0.65–0.8× oneDNN's time on VGG-11's 6×6 maps
#: (512 → 512 at 48 samples: forward 18.5 against 23.9 ms, input gradient 17.7 against 25.0)
#: and lost on its 12×12 ones (256 → 256: 25.8 against 25.0 and 31.9 against 23.9)
WINOGRAD_ANY_BATCH_PIXELS = 36


def _winograd_f23(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether the forward (or, with the output gradient as ``x``, the input gradient) runs as
    F(2×2, 3×3) (:mod:`leanspike.winograd`): where it applies, below :data:`WINOGRAD_MAX_BATCH`
    samples or on maps of at most :data:`WINOGRAD_ANY_BATCH_PIXELS` output pixels."""
    return (winograd.applies(x, weight, stride, padding)
            and _small_batch_or_map(x, weight, stride, padding, WINOGRAD_ANY_BATCH_PIXELS))


def _small_batch_or_map(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple, pixels: int) -> bool:
    """Below :data:`WINOGRAD_MAX_BATCH` samples (if it is set), or on output maps of at most ``pixels``."""
    if WINOGRAD_MAX_BATCH is None or x.shape[0] < WINOGRAD_MAX_BATCH:
        return True
    out = _out_size(x, weight, (stride, padding, (1, 1), 1))
    return out[0] * out[1] <= pixels


#: Whether F(4×4, 3×3) (:mod:`leanspike.winograd_f43`) is taken where it applies: measured on
#: the AVX-512 machine only. Per call there (VGG-11's stages, 2 threads, ``bench/conv_kernels.py``),
#: on 12×12 maps it took 0.5–0.8× the time of the kernel picked before at 8 samples and at 48
#: (256 → 256, 48 samples: forward 14.6 against 25.8 ms for oneDNN, input gradient 14.6 against
#: 23.8, weight gradient 14.3 against 27.1), and on 24×24 maps (64 → 128) 0.77–0.91× at 8
WINOGRAD43 = CPU_CAPABILITY == "AVX512"
#: output pixels per sample up to which F(4×4, 3×3) is taken at any batch; on bigger maps
#: only below :data:`WINOGRAD_MAX_BATCH` samples (64 → 128 on 24×24 maps at 48 samples: forward
#: 0.87×, but input and weight gradients 1.2× and 1.3× oneDNN's time)
WINOGRAD43_ANY_BATCH_PIXELS = 256


#: Whether forwards take F(4×4, 3×3) too (else only the input and weight gradients do). Off: its
#: rounding (1e-5 of the output's largest value in float32, 20× a direct convolution's) flips
#: the spikes of neurons whose potential lies that close to the threshold, and in a deep SNN a
#: few flips grow layer by layer through the norms' batch statistics and the potentials carried
#: over steps: one SLTT iteration of VGG-11 at batch 8 (T = 6, benchmark weights) had 4 flipped
#: spikes after the first F(4×4, 3×3) layer, then 198, 3 547, 16 205 and 53 812 in the next four,
#: its gradients differing by ~100% from those of the kernels before, while F(2×2, 3×3) against
#: oneDNN flipped none. Gradients decide no spike: there it moves results by its rounding only
#: (weight gradients 5e-6 relative). Interleaved, VGG-11, batch 8, T = 6: the gradients-only rule
#: took 0.939× (BPTT, 9/10 rounds faster) and 0.985× (SLTT, 8/12) the time of no F(4×4, 3×3);
#: forwards too, 0.991× (BPTT) and 0.987× (SLTT) of the gradients-only rule
WINOGRAD43_FORWARD = False


def _winograd_f43(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """Whether the input and weight gradients (and with :data:`WINOGRAD43_FORWARD`, the forward) of
    ``x`` through ``weight`` run as F(4×4, 3×3): where it applies, on this CPU, below
    :data:`WINOGRAD_MAX_BATCH` samples or on maps of at most :data:`WINOGRAD43_ANY_BATCH_PIXELS`
    output pixels."""
    return (WINOGRAD43 and winograd_f43.applies(x, weight, stride, padding)
            and _small_batch_or_map(x, weight, stride, padding, WINOGRAD43_ANY_BATCH_PIXELS))


#: in_channels·kh·kw below which a convolution runs as one matrix product over the unfolded
#: input (:func:`_conv_step`): oneDNN pads few input channels to a whole block; the first layer
#: on 2-channel events, batch 8: 1.0 ms against 5.5 ms for oneDNN and 6.6 ms for oneDNN channels-last
#: with the copy back (bench/conv_kernels.py)
SHALLOW_DEPTH = 64
#: ... when the conv has at least this many output channels, which share the unfolded input:
#: with few, oneDNN's padding wastes little and unfolding costs more (forward, 2 threads: 2 → 64,
#: 3×3 on 48×48, 1.5 against 5.0 ms at 8 samples and 393 against 496 at 768; but 1 → 6, 5×5 on
#: 28×28, 45.7 against 4.4 ms at 768 and 2 → 16, 3×3 on 48×48, 1.4 against 0.3 ms at 8)
SHALLOW_MIN_OUT = 32


def _unfolds(weight: torch.Tensor) -> bool:
    """Whether a CPU convolution with ``weight`` runs as a product over its unfolded input."""
    return weight[0].numel() < SHALLOW_DEPTH and weight.shape[0] >= SHALLOW_MIN_OUT


def _takes_unfold(x: torch.Tensor, weight: torch.Tensor, conf: tuple) -> bool:
    """Whether :func:`_conv_step` runs ``x`` through ``weight`` (``conf``: stride, padding, dilation,
    groups) as that product: on the CPU, ungrouped, where :func:`_unfolds` says it pays."""
    return x.device.type == "cpu" and conf[3] == 1 and _unfolds(weight)


#: output pixels per sample up to which a weight gradient runs as kh·kw matrix products over
#: shifted windows of the input (:func:`_weight_grad_shifted`): oneDNN's weight-gradient kernel
#: is slow on small maps (VGG-11's 6×6 stage, 512 → 512: 20.3 against 9.1 ms at 8 samples; its
#: 12×12 stage: 10.6 against 9.0), while on 24×24 maps with 64 channels it is the faster one
#: (4.5 against 5.3 ms). Per call, 2 threads (bench/conv_kernels.py)
SMALL_MAP_PIXELS = 144


#: input values one part of :func:`_weight_grad_shifted` holds in each of its two copies (16 MiB
#: in float32): all T·B samples at once made VGG-11's 6×6 stage hold 2 × 53 MiB at T = 10, which
#: raised BPTT's peak RSS by about 50 MiB for no gain in time
SHIFT_VALUES = 1 << 22


def _valid_taps(size: int, size_out: int, k: int, stride: int, pad: int) -> list[tuple[slice, slice]]:
    """Per kernel offset ``i`` along one axis: the outputs whose input ``p·stride + i − pad`` lies
    inside the map, and those inputs (empty slices where none does)."""
    taps = []
    for i in range(k):
        lo = max(0, -(-(pad - i) // stride))
        hi = max(lo, min(size_out, (size - 1 + pad - i) // stride + 1))
        first = lo * stride + i - pad
        taps.append((slice(lo, hi), slice(first, first + (hi - lo - 1) * stride + 1 if hi > lo else first, stride)))
    return taps


def _weight_grad_shifted(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: tuple,
                         padding: tuple, into: torch.Tensor | None = None) -> torch.Tensor | None:
    """``dL/dW`` of a plain convolution as one matrix product per kernel position (i, j):
    ``dW[:, :, i, j] = grad_ij [O, M]ᵀ @ x_ij [M, C]`` over the outputs whose window position
    (i, j) lies inside the input and those inputs (channels-last strided copies; the padding's
    zeros are left out: on VGG-11's 3×3 maps 49 of 81 products, 0.77× the time of windows over
    the padded input). Summed over parts of ``n`` samples (at most :data:`SHIFT_VALUES` values
    per copy). ``into`` (``[kh, kw, O, C]``): add the products to it in place and return None
    (:class:`WeightGradSums`)."""
    n, out_channels, h_out, w_out = grad.shape
    channels, h, w = x.shape[1:]
    kh, kw = weight.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    rows, cols = _valid_taps(h, h_out, kh, sh, ph), _valid_taps(w, w_out, kw, sw, pw)
    part = max(1, SHIFT_VALUES // max(channels * h * w, out_channels * h_out * w_out))
    dw = grad.new_zeros(kh, kw, out_channels, channels) if into is None else into
    for start in range(0, n, part):
        x_last = x[start:start + part].permute(0, 2, 3, 1)  # [k, H, W, C] views
        g_last = grad[start:start + part].permute(0, 2, 3, 1)
        for i, (out_rows, in_rows) in enumerate(rows):
            for j, (out_cols, in_cols) in enumerate(cols):
                if out_rows.stop > out_rows.start and out_cols.stop > out_cols.start:
                    dw[i, j].addmm_(g_last[:, out_rows, out_cols].reshape(-1, out_channels).t(),
                                    x_last[:, in_rows, in_cols].reshape(-1, channels))
    return None if into is not None else dw.permute(2, 3, 0, 1).contiguous()


#: the module of each Winograd weight-gradient kernel :func:`weight_grad_kernel` names
_WINOGRAD_ALGORITHMS = {"winograd": winograd, "winograd43": winograd_f43}


class WeightGradSums:
    """Context manager: while active, the weight gradients that :func:`_weight_grad_shifted`,
    F(2×2, 3×3) (:func:`~leanspike.winograd.weight_grad_tiles`) and F(4×4, 3×3) make for leaf
    weights without hooks are summed in place across calls, in the kernel's own layout (``[kh, kw,
    O, C]``, or ``[16, O, C]`` / ``[36, O, C]`` before the kernel transform's adjoint), instead of every call
    making a new gradient, bringing it to ``[O, C, kh, kw]`` and handing it to autograd to add
    to ``.grad``. SLTT goes back through every convolution T times per batch; VGG-11's three
    512 → 512 weights made that 9.4 MB allocation, transpose and addition at every step, and
    F(2×2, 3×3)'s adjoint transform, a pass over 16·C·O values, made its weight gradient the
    slower kernel at batch 8. :meth:`flush` adds the sums to ``.grad`` (one transform per
    weight); the engine holds one per batch and flushes before every optimizer step and at the end."""

    _active: list["WeightGradSums"] = []

    def __init__(self) -> None:
        self._sums: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def current(cls) -> "WeightGradSums | None":
        return cls._active[-1] if cls._active else None

    @staticmethod
    def takes(weight: torch.Tensor) -> bool:
        """A leaf that autograd would only add the gradient to (no hooks to call on it)."""
        return (weight.is_leaf and weight.requires_grad and not weight._backward_hooks
                and not getattr(weight, "_post_accumulate_grad_hooks", None))

    def sum_for(self, weight: torch.Tensor) -> torch.Tensor:
        """The running ``[kh, kw, O, C]`` sum for ``weight`` (zeros at first)."""
        hit = self._sums.get((id(weight), "shifted"))
        if hit is None or hit[0] is not weight:
            hit = (weight, weight.new_zeros(*weight.shape[2:], *weight.shape[:2]))
            self._sums[(id(weight), "shifted")] = hit
        return hit[1]

    def add_tiles(self, weight: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, padding: tuple,
                  kind: str = "winograd") -> None:
        """Add one call's Winograd weight gradient of a 3×3 ``weight``, before the adjoint
        transform (``weight_grad_tiles`` of :mod:`~leanspike.winograd` for ``kind`` "winograd",
        ``[16, O, C]``, or of :mod:`~leanspike.winograd_f43` for "winograd43", ``[36, O, C]``), to
        its running sum; the first call's product is the sum (no zeros to fill)."""
        algorithm = _WINOGRAD_ALGORITHMS[kind]
        hit = self._sums.get((id(weight), kind))
        if hit is None or hit[0] is not weight:
            self._sums[(id(weight), kind)] = (weight, algorithm.weight_grad_tiles(grad, x, padding))
        else:
            algorithm.weight_grad_tiles(grad, x, padding, into=hit[1])

    def flush(self) -> None:
        """Add every sum to its weight's ``.grad`` (set it where it is None) and start again."""
        for (_, kind), (weight, total) in self._sums.items():
            grad = (total.permute(2, 3, 0, 1) if kind == "shifted"
                    else _WINOGRAD_ALGORITHMS[kind].weight_grad_from_tiles(total))
            if weight.grad is None:
                weight.grad = grad.contiguous()
            else:
                weight.grad.add_(grad)
        self._sums.clear()

    def __enter__(self) -> "WeightGradSums":
        self._active.append(self)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._active.remove(self)
        if exc_type is None:
            self.flush()
        else:
            self._sums.clear()


#: samples from which a weight gradient runs as an NNPACK convolution (:func:`_weight_grad_as_conv`);
#: with fewer, oneDNN's kernel is faster (a batch of 8: 6-13 ms against 20-37 ms on VGG-11's 12×12
#: and 6×6 stages, 2 threads; at 48 samples NNPACK takes 0.6-1.0× oneDNN's time: bench/conv_kernels.py;
#: at 32, with AlexNet's shapes, slower: see :data:`WINOGRAD_MIN_BATCH`)
DW_CONV_MIN_BATCH = 48
#: output map sides for which it applies: NNPACK takes kernels of up to 16×16, and on maps under
#: 6×6 it ran slower than oneDNN. (Larger maps cut into tiles gained little, 0.88× on 24×24, and
#: their tile copies and NNPACK's transformed kernels raised the peak memory by ~100 MiB.)
DW_CONV_SIDES = range(6, 17)


def _dw_as_conv(grad: torch.Tensor, x: torch.Tensor, stride: tuple) -> bool:
    """Whether :func:`_weight_grad_as_conv` applies (stride 1, big batch, map of 6-16 pixels a side)."""
    return (USE_NNPACK and stride == (1, 1) and x.dtype == torch.float32 and grad.shape[0] >= DW_CONV_MIN_BATCH
            and grad.shape[2] in DW_CONV_SIDES and grad.shape[3] in DW_CONV_SIDES)


def _weight_grad_as_conv(grad: torch.Tensor, x: torch.Tensor, padding: tuple) -> torch.Tensor:
    """``dL/dW`` of a stride-1 convolution as one NNPACK convolution: ``dW[o, c] = Σ_n Σ_p
    grad[n, o, p] · x_padded[n, c, p + ·]`` convolves the padded input, its samples taken as
    channels, with the output gradient as the kernel (which NNPACK transforms once). Rounds
    differently from oneDNN (relative 1e-6 in float32)."""
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).transpose(0, 1).contiguous()
    kernel = grad.transpose(0, 1).contiguous()
    out = torch.ops.aten._nnpack_spatial_convolution(padded, kernel, None, [0, 0], [1, 1])
    return out.transpose(0, 1).contiguous()  # [C, O, kh, kw] -> [O, C, kh, kw]


#: samples from which the weight gradient of a convolution that F(2×2, 3×3) applies to
#: (:func:`winograd.applies`) runs as F(2×2, 3×3) too (0: never). Per call on VGG-11's 12×12
#: and 6×6 stages it took 0.6-0.8× the time of the kernel picked before (NNPACK, the unfolded
#: product or oneDNN) from 16 samples, but up to 2.2× at 8 (bench/conv_kernels.py); whole BPTT
#: iterations, interleaved and paired in one process: 0.97× at T = 6 (24 rounds), 0.94× at T = 10;
#: from 8 samples instead, SLTT 1.03× and SLTT-K (K = 1) 1.05× (12 rounds). Smaller calls take it
#: too where a :class:`WeightGradSums` sums them before the adjoint transform, whose pass over
#: 16·C·O values was the cost at 8 samples (per call at batch 8, 512 → 512 on 6×6: 3.0 against
#: 5.2 ms for the shifted windows; SLTT at T = 6 0.96×, 13/14 rounds faster)
WINOGRAD_DW_MIN_BATCH = 16


def weight_grad_kernel(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: tuple,
                       padding: tuple, summed: bool = False) -> str:
    """The kernel :class:`Conv2dSequence` takes for a weight gradient: ``"winograd43"`` (F(4×4, 3×3),
    where :func:`_winograd_f43` says so), ``"winograd"`` (F(2×2, 3×3)), ``"nnpack"``
    (:func:`_weight_grad_as_conv`), ``"shifted"`` (:func:`_weight_grad_shifted`) or ``"oneDNN"``.
    ``summed``: the gradient goes to a :class:`WeightGradSums`, where F(2×2, 3×3) pays at any
    batch (below :data:`WINOGRAD_DW_MIN_BATCH` samples its adjoint transform runs once per
    batch, not per call)."""
    if _winograd_f43(x, weight, stride, padding):
        return "winograd43"
    if (WINOGRAD_DW_MIN_BATCH and (summed or grad.shape[0] >= WINOGRAD_DW_MIN_BATCH)
            and winograd.applies(x, weight, stride, padding)):
        return "winograd"
    if _dw_as_conv(grad, x, stride):
        return "nnpack"
    return "shifted" if grad.shape[2] * grad.shape[3] <= SMALL_MAP_PIXELS and _wide(weight) else "oneDNN"


class Conv2dSequence(torch.autograd.Function):
    """A plain ``Conv2d`` over ``[t·B, C, H, W]`` that picks its kernels by size (see
    :func:`_winograd`): NNPACK for the forward and for the input gradient (the forward conv
    of the output gradient with the flipped kernel) of big stride-1 calls, F(2×2, 3×3) in
    PyTorch ops (:mod:`leanspike.winograd`) for small-batch 3×3 ones, oneDNN otherwise; on
    AVX-512 the input and weight gradients of 3×3 calls on maps of 8×8 and more by F(4×4, 3×3)
    (:func:`_winograd_f43`); the weight gradient of big stride-1 calls by NNPACK too
    (:func:`_weight_grad_as_conv`), else by oneDNN, or on maps of at most
    :data:`SMALL_MAP_PIXELS` pixels as matrix products over shifted windows of the input.
    Saves what ``F.conv2d`` saves (input and weight)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: tuple, padding: tuple):  # type: ignore[override]
        # F(4×4, 3×3) for the input gradient: the weight itself (saved tensors come back as new
        # objects), so that its flipped kernels are made once per batch, keyed on it (KernelCache)
        ctx.kernels = ctx.f23 = None
        ctx.f43 = weight if not _unfolds(weight) and _winograd_f43(x, weight, stride, padding) else None
        if _unfolds(weight):  # few input channels (the first layer), many outputs: unfold + matmul
            out = _conv_step(x, weight, bias, (stride, padding, (1, 1), 1))
        elif ctx.f43 is not None and WINOGRAD43_FORWARD:
            out = winograd_f43.conv3x3(x, winograd.transformed(weight, winograd_f43.kernel_transform), bias, padding)
        elif _winograd(x, weight, stride, padding):
            out = torch.ops.aten._nnpack_spatial_convolution(x, weight, bias, list(padding), list(stride))
        elif _winograd_f23(x, weight, stride, padding):  # small batches (SLTT's steps)
            # the transformed kernels derive from the weight alone (like the weight, not counted
            # as a saved activation); the input gradient reuses them. The weight itself (as for
            # F(4×4, 3×3)) is the cache's key, for backward to release them
            ctx.kernels, ctx.f23 = winograd.transformed(weight), weight
            out = winograd.conv3x3(x, ctx.kernels, bias, padding)
        else:
            out = F.conv2d(x, weight, bias, stride, padding)
        ctx.save_for_backward(x, weight)
        ctx.conf, ctx.has_bias = (stride, padding), bias is not None
        # the parameter itself (saved tensors come back as new tensor objects): WeightGradSums
        # keys its sums on it and gives it its .grad
        ctx.leaf = weight if WeightGradSums.current() is not None and WeightGradSums.takes(weight) else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conf
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if _unfolds(weight):  # as the forward ran it
            return (*_conv_step_backward(grad, x, weight, ctx.has_bias, (stride, padding, (1, 1), 1), list(need[:3])),
                    None, None)
        # this node runs once: its kernels go with it (and with the cache's entry in a last pass)
        kernels, ctx.kernels = ctx.kernels, None
        if kernels is not None:
            winograd.forget(ctx.f23)
            ctx.f23 = None
        if need[0] and ctx.f43 is not None:
            grad_x = winograd_f43.conv3x3_input_grad(
                grad, winograd.transformed(ctx.f43, winograd_f43.flipped_kernel_transform), padding)
            winograd.forget(ctx.f43, winograd_f43.flipped_kernel_transform)
        elif need[0] and kernels is not None:
            grad_x = winograd.conv3x3_input_grad(grad, kernels, padding)
        elif need[0]:
            k = weight.shape[2:]
            flipped_padding = tuple(kk - 1 - p for kk, p in zip(k, padding))
            if _winograd(grad, weight, stride, flipped_padding):
                flipped = weight.transpose(0, 1).flip(2, 3).contiguous()
                grad_x = torch.ops.aten._nnpack_spatial_convolution(grad, flipped, None, list(flipped_padding), [1, 1])
            else:
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                    [True, False, False])[0]
        sums = WeightGradSums.current() if ctx.leaf is not None else None
        kernel = weight_grad_kernel(grad, x, weight, stride, padding, sums is not None) if need[1] else "oneDNN"
        if kernel != "oneDNN":
            if kernel in _WINOGRAD_ALGORITHMS and sums is not None and grad.shape[0] < WINOGRAD_DW_MIN_BATCH:
                # a small call (SLTT's steps) among many for this weight: sum before the adjoint
                # transform; a big one (BPTT's: once per weight and batch) transforms at once
                # instead of holding 16·C·O (36·C·O) values to the end of the batch
                sums.add_tiles(ctx.leaf, grad, x, padding, kernel)
                grad_w = None
            else:
                grad_w = (_WINOGRAD_ALGORITHMS[kernel].conv3x3_weight_grad(grad, x, padding)
                          if kernel in _WINOGRAD_ALGORITHMS
                          else _weight_grad_as_conv(grad, x, padding) if kernel == "nnpack"
                          else _weight_grad_shifted(grad, x, weight, stride, padding,
                                                    None if sums is None else sums.sum_for(ctx.leaf)))
            grad_b = grad.sum((0, 2, 3)) if ctx.has_bias and need[2] else None
        elif need[1] or (ctx.has_bias and need[2]):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(stride), list(padding), [1, 1],
                False, [0, 0], 1, [False, need[1], ctx.has_bias and need[2]])
        return grad_x, grad_w, grad_b, None, None


def _plain_conv2d(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)  # type: ignore[union-attr]
            and m.groups == 1 and tuple(m.dilation) == (1, 1))  # type: ignore[union-attr]


def _conv2d(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or not x.dtype.is_floating_point or x.device.type != "cpu":
        return m(x)
    return Conv2dSequence.apply(x, m.weight, m.bias, tuple(m.stride), tuple(m.padding))


# ------------------------------------------------------------------------------ pooling
def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _avg_pool2d(m: nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    args = (_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding),
            m.ceil_mode, m.count_include_pad, m.divisor_override)
    return pooling.avg_pool2d(x, args)


def _repeat_cells(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling to a multiple of the input size: every window is one cell,
    so each output cell is its input cell (x / 1): a repeat, without the generic kernel."""
    h, w = x.shape[-2:]
    rh, rw = size[0] // h, size[1] // w
    return x[..., :, None, :, None].expand(*x.shape[:-2], h, rh, w, rw).reshape(*x.shape[:-2], size[0], size[1])


def _adaptive_size(m: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> tuple[int, int] | None:
    """The output size when ``m`` only repeats cells of ``x`` (a multiple of its size), else None."""
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    size = tuple(x.shape[-2 + i] if o is None else o for i, o in enumerate(out))
    h, w = x.shape[-2:]
    return size if x.dim() == 4 and size[0] % h == 0 and size[1] % w == 0 else None  # type: ignore[return-value]


# ------------------------------------------------------------------------------ running
def _flatten01(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(0, 1)


def _samplewise(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    steps, batch = x.shape[:2]
    flat = mark_derived(x.flatten(0, 1), _flatten01, x)
    fn = m
    if _plain_conv2d(m):
        fn = partial(_conv2d, m)
    elif type(m) is nn.AvgPool2d:
        fn = partial(_avg_pool2d, m)
    elif type(m) is nn.AdaptiveAvgPool2d:
        size = _adaptive_size(m, flat)
        if size is not None:
            fn = partial(_repeat_cells, size=size)
    out = fn(flat)
    if isinstance(m, _PURE):
        mark_derived(out, fn, flat)
    return mark_derived(out.unflatten(0, (steps, batch)), lambda t: t.unflatten(0, (steps, batch)), out)


def run_sequence(seq: nn.Sequential, x: torch.Tensor, kept_input: bool = False) -> torch.Tensor:
    """``[t, B, ...]`` through ``seq`` layer by layer (``supports_sequence(seq)`` must hold).

    ``kept_input``: ``x`` is the engine's input, kept whatever happens (see :class:`InputConvNorm`).
    """
    children = list(seq._modules.values())
    i = 0
    while i < len(children):
        m = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        if i == 0 and kept_input and nxt is not None and _input_conv_norm(m, nxt, x):
            lif = children[2] if len(children) > 2 else None
            if _with_lif(m, lif, x):  # the LIF's u is not kept either
                after = children[3] if len(children) > 3 else None
                dropout = after if norm_lif.takes_dropout(after, _conv_output_like(m, x)) else None  # type: ignore[arg-type]
                x = input_conv_norm_lif(m, nxt, lif, x, dropout)  # type: ignore[arg-type]
                i += 3 if dropout is None else 4
                continue
            x = input_conv_norm(m, nxt, x)  # type: ignore[arg-type]
            i += 2
            continue
        if nxt is not None and norm_lif.applies(m, nxt, x):  # the pair saves one tensor (NormLIF)
            after = children[i + 2] if i + 2 < len(children) else None
            dropout = after if norm_lif.takes_dropout(after, x) else None  # compiled: the mask in the same loop
            x = norm_lif.norm_lif(m, nxt, x, dropout)  # type: ignore[arg-type]
            i += 2 if dropout is None else 3
            continue
        if isinstance(m, nn.Sequential):
            x = run_sequence(m, x, kept_input and i == 0)
        elif isinstance(m, (LIF, SequenceDropout)):
            x = m.forward_sequence(x)
        elif is_step_norm(m):
            x = norm_sequence(m, x)  # type: ignore[arg-type]
        else:
            x = _samplewise(m, x)
        i += 1
    return x
