"""OTTT (Xiao et al., 2022): online training through time with presynaptic traces.

Every step's loss / T is back-propagated at once with the membrane detached, as in
SLTT, but a weight's gradient uses the presynaptic trace ``â[t] = λ·â[t−1] + s[t]``
in place of the spike ``s[t]``: ``∇W += (∂L[t]/∂u[t])ᵀ·â[t]``. Unrolling the leak
``u[t] = Σ_τ λ^{t−τ}·W·s[τ]`` (reset ignored) shows why the trace carries the temporal
credit that the detached membrane drops, with nothing stored but one trace per layer:
memory is constant in T. Errors flowing to a layer's input stay purely spatial (Wᵀ·e).

The method works on any leanspike model: while it runs, every ``nn.Linear`` and
``nn.Conv2d`` (subclasses included) has its ``forward`` replaced by a traced one; the
originals are restored afterwards. Traces live in the method's per-batch context, so
they start from zero with every batch. λ is the decay of the LIF whose spikes the layer
receives (the last LIF before it in module order; the first LIF's for layers fed by the
network input). Plain Linear/Conv2d layers use a fused autograd function that saves
only the trace; layers with their own ``forward`` (e.g. weight standardisation) run it
twice, once on the input with detached weights and once on the trace.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Schedule, StepResult, split_intervals
from ..losses import WindowLoss
from ..neuron import LIF
from .base import Method

UPDATES = ("batch", "step")


def _dtypes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    return (x.dtype, None, weight.dtype, None if bias is None else bias.dtype)


def _cast(grads: tuple, dtypes: tuple) -> tuple:
    """Each gradient in its input's dtype (under autocast the output's may differ)."""
    return tuple(None if g is None else g.to(d) for g, d in zip(grads, dtypes))


class _TracedLinear(torch.autograd.Function):
    """``x·Wᵀ + b`` forward; backward gives ``g·W`` to x and ``gᵀ·trace`` to W."""

    @staticmethod
    def forward(ctx, x, trace, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(trace, weight)
        ctx.dtypes = _dtypes(x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        trace, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)  # autocast: one dtype
        flat = grad.reshape(-1, grad.shape[-1])
        gx = grad @ weight if ctx.needs_input_grad[0] else None
        gw = flat.T @ trace.reshape(-1, trace.shape[-1]) if ctx.needs_input_grad[2] else None
        gb = flat.sum(0) if ctx.needs_input_grad[3] else None
        return (*_cast((gx, None, gw, gb), ctx.dtypes),)


class _TracedConv2d(torch.autograd.Function):
    """Conv2d forward on x; the weight gradient is computed against the trace."""

    @staticmethod
    def forward(ctx, x, trace, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(trace, weight)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        ctx.dtypes = _dtypes(x, weight, bias)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        trace, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)  # autocast: one dtype
        stride, padding, dilation, groups, has_bias = ctx.conf
        need = ctx.needs_input_grad
        # the input gradient depends on the input's shape only, so the trace can stand in
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, trace, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, [need[0], need[2], has_bias and need[3]])
        return (*_cast((gx, None, gw, gb), ctx.dtypes), None, None, None, None)


def _fused(module: nn.Module) -> bool:
    if type(module).forward is nn.Linear.forward:
        return True
    return (type(module).forward is nn.Conv2d.forward and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def trace_decays(model: nn.Module) -> dict[nn.Module, float]:
    """λ for every Linear/Conv2d: the decay of the last LIF before it in module order."""
    modules = list(model.modules())
    neurons = [m for m in modules if isinstance(m, LIF)]
    if not neurons:
        raise ValueError(f"OTTT needs LIF neurons to take the trace decay from; {type(model).__name__} has none")
    decay = neurons[0].decay
    decays: dict[nn.Module, float] = {}
    for m in modules:
        if isinstance(m, LIF):
            decay = m.decay
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            decays[m] = decay
    return decays


class _Traced:
    """Replaces one layer's forward while OTTT runs; holds that layer's trace."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay = module, decay
        self.trace: torch.Tensor | None = None
        self.saved = module.__dict__.get("forward")
        self.original: Callable[..., torch.Tensor] = module.forward
        self.reentered = False
        self.fused = _fused(module)
        module.forward = self.forward

    def restore(self) -> None:
        del self.module.forward
        if self.saved is not None:
            self.module.forward = self.saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reentered:  # called by functional_call below
            return self.original(x)
        s = x.detach()
        # a fresh tensor even at the first step: x[t] is often a view of the whole [T, B, ...]
        # input, and saving that view for backward would keep (and count) all T steps
        self.trace = s.clone() if self.trace is None else self.decay * self.trace + s
        m = self.module
        if not torch.is_grad_enabled():
            return self.original(x)
        if self.fused and isinstance(m, nn.Linear):
            return _TracedLinear.apply(x, self.trace, m.weight, m.bias)
        if self.fused:
            return _TracedConv2d.apply(x, self.trace, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        detached = {name: p.detach() for name, p in m.named_parameters()}
        self.reentered = True
        try:
            spatial = torch.func.functional_call(m, detached, (x,))  # errors to x only
        finally:
            self.reentered = False
        on_trace = self.original(self.trace)  # weight gradient against the trace
        return spatial + (on_trace - on_trace.detach())


@contextlib.contextmanager
def online_traces(model: nn.Module) -> Iterator[list[_Traced]]:
    """Trace every Linear/Conv2d of ``model`` inside the block; traces start from zero."""
    traced = [_Traced(m, d) for m, d in trace_decays(model).items()]
    try:
        yield traced
    finally:
        for t in traced:
            t.restore()


class OTTT(Method):
    """Online training through time; ``update="batch"`` accumulates the steps' gradients
    into one optimizer step per batch, ``update="step"`` steps after every time step."""

    name = "ottt"

    def __init__(self, loss: WindowLoss | None = None, update: str = "batch") -> None:
        super().__init__(loss)
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        self.update = update

    def _check_loss(self, schedule: Schedule, total_steps: int) -> None:
        if self.loss.decomposes != "step":
            raise ValueError(f"{self.name} needs a per-step loss, got {self.loss!r}")

    def schedule(self, total_steps: int) -> Schedule:
        return Schedule(split_intervals(total_steps, 1), update_per_interval=self.update == "step")

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler | None" = None) -> StepResult:
        with online_traces(model):
            return super().train_step(model, inputs, targets, optimizer, scaler)

    def compute_gradients(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        with online_traces(model):
            return super().compute_gradients(model, inputs, targets)

    def __repr__(self) -> str:
        return f"OTTT(update={self.update!r}, loss={self.loss!r})"
