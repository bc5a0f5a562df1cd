"""LIF time loops, and per-step batch norm + LIF (+ dropout) functions, compiled for the CPU (opt-in).

On the CPU the tensor path runs an LIF's time loop as four PyTorch ops per step (add,
compare, subtract, scale), each a pass over the layer's memory, and a per-step batch norm
before it as a kernel call per step; backward is as many passes again. Here the same
equations go through ``torch.compile`` (inductor, which writes C++ loops and builds them with
the machine's compiler): each neuron's whole time loop becomes one pass that reads its
inputs once and writes its spikes once, with the norm's statistics and normalisation (and a
per-sequence dropout mask after the LIF) in the same compiled function. At batch 8, T = 6,
2 threads, VGG-11's 64 × 48 × 48 layer: norm + LIF forward 5.0 ms and backward 8.9 ms against
17 and 41 ms for the tensor path's functions.

What runs compiled (on CPU float32/float64 tensors over 2 to :data:`MAX_STEPS` steps):
:func:`lif_forward` / :func:`lif_backward` (:class:`~leanspike.neuron.LIFSequence`),
:func:`norm_lif_forward` / :func:`norm_lif_backward` (:class:`~leanspike.norm_lif.NormLIF`, and
:class:`~leanspike.multistep.InputConvNormLIF`, which recomputes the norm's input). One-step
calls (SLTT's) keep the tensor path: there is no loop to fuse, and a compiled call costs more
than the passes it saves; so do runs without a graph (:class:`~leanspike.neuron.LIF` asks for the
tensor path there: SLTT-K's skipped steps vary in length, and each length would compile anew). Each function compiles once per shape and variant (static shapes:
with symbolic sizes the loops ran up to 3× slower, depending on the shape compiled first);
VGG-11's BPTT compiles 10 of them, about 30 s in all the first time, cached on disk by PyTorch.

Opt-in (:func:`leanspike.neuron.compile_lif`, or ``compile_lif: true`` in a config). What
changes: spikes are the same; the norm's statistics and every gradient differ from the tensor
path's by float rounding only (other summation orders; the tests bound them). If a
compilation fails, a warning says so and the same functions run uncompiled.
"""

from __future__ import annotations

import types
import warnings
from functools import cache
from typing import Any, Callable

import torch

from .surrogate import Surrogate

#: dtypes the compiled loops take (others keep the tensor path)
DTYPES = (torch.float32, torch.float64)
#: the most steps one compiled loop takes (its loop over steps is unrolled): longer LIF
#: intervals run in pieces of this many steps, longer norm + LIF pairs keep the tensor path
MAX_STEPS = 16


def usable(tensor: torch.Tensor) -> bool:
    """True when the compiled loops take ``tensor`` ``[T, ...]``: a non-empty float32/float64 CPU
    tensor of two steps or more (over one step, as SLTT runs, there is no loop to fuse, and
    calling a compiled function costs more than the few passes it would save)."""
    return (tensor.device.type == "cpu" and tensor.dtype in DTYPES and tensor.numel() > 0 and tensor.dim() >= 2
            and tensor.shape[0] >= 2)


def _chunks(steps: int) -> list[tuple[int, int]]:
    """``[(t0, t1), ...]``: ``steps`` in pieces of at most :data:`MAX_STEPS`, in time order."""
    return [(t, min(t + MAX_STEPS, steps)) for t in range(0, steps, MAX_STEPS)]


def _next_carry(u: torch.Tensor, s: torch.Tensor, decay: float, threshold: float, reset: str) -> torch.Tensor:
    """``c[t]`` with the operations of :func:`leanspike.neuron._next_carry` (s is 0 or 1, so
    ``threshold·s`` is exact and the subtraction rounds once, as ``sub(alpha=)`` does)."""
    if reset == "soft":
        return (u - threshold * s) * decay
    if reset == "hard":
        return (decay * u) * (1 - s)
    return decay * u - threshold * s


def _lif_steps(currents: list[torch.Tensor], carry: torch.Tensor | None, decay: float, threshold: float,
               reset: str) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Spikes and potentials of each step's current, and the last carry (traced into the graphs)."""
    spikes, potentials = [], []
    for current in currents:
        u = current if carry is None else carry + current
        s = (u >= threshold).to(current.dtype)
        carry = _next_carry(u, s, decay, threshold, reset)
        spikes.append(s)
        potentials.append(u)
    assert carry is not None
    return spikes, potentials, carry


def _potential_grads(potentials: list[torch.Tensor], grad_spikes: torch.Tensor | None, upstream: torch.Tensor | None,
                     surrogate: Surrogate, decay: float, threshold: float, reset_weight: float,
                     routes: bool) -> list[torch.Tensor]:
    """``dL/du`` of each step, in time order (soft resets, or any reset without temporal routes):
    ``h·(dL/ds − k·up) + λ·up`` with ``up`` the next step's (``upstream`` after the last)."""
    grads = []
    upstream = upstream if routes else None
    for t in range(len(potentials) - 1, -1, -1):
        h = surrogate.derivative(potentials[t] - threshold)
        if grad_spikes is None:
            g = torch.zeros_like(h) if upstream is None else h * (-reset_weight * upstream) + decay * upstream
        else:
            g = h * grad_spikes[t] if upstream is None else h * (grad_spikes[t] - reset_weight * upstream) + decay * upstream
        grads.append(g)
        if routes:
            upstream = g
    return grads[::-1]


def _forward_loop(currents: torch.Tensor, carry: torch.Tensor | None, decay: float, threshold: float,
                  reset: str, want_spikes: bool, want_potentials: bool):
    """``[t, n]`` currents from ``carry`` ``[n]`` (None: rest) → spikes and potentials ``[t, n]``
    (each None unless wanted) and the last carry. (Returned, not written into given buffers:
    inductor writes returned stacks in place, but copies into an input after the loop.)"""
    spikes, potentials, carry = _lif_steps(list(currents.unbind(0)), carry, decay, threshold, reset)
    return (torch.stack(spikes) if want_spikes else None, torch.stack(potentials) if want_potentials else None,
            carry)


def _backward_loop(potentials: torch.Tensor, grad_spikes: torch.Tensor | None, upstream: torch.Tensor | None,
                   surrogate: Surrogate, decay: float, threshold: float, reset_weight: float,
                   routes: bool) -> torch.Tensor:
    """``dL/du`` ``[t, n]`` given ``upstream`` = dL/du of the step after the last (None: none)."""
    return torch.stack(_potential_grads(list(potentials.unbind(0)), grad_spikes, upstream, surrogate, decay,
                                        threshold, reset_weight, routes))


@cache
def _compiled(fn: Callable, key: tuple) -> Callable:
    """``fn`` compiled for one ``key`` (steps, which inputs exist, dtype, ...) as its own code
    object: PyTorch counts recompilations per code object (8 at most by default), and each
    layer shape is one more (static shapes: with symbolic sizes inductor's loops ran up to 3×
    slower here, depending on which shape it compiled first)."""
    name = f"{fn.__name__}_" + "_".join(str(k) for k in key)
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    variant = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    return torch.compile(variant, dynamic=False)


#: set when a compilation failed: later calls run the functions uncompiled
_failed: list[str] = []


def _run(fn: Callable, key: tuple, *args: Any) -> Any:
    """``fn(*args)`` through its compiled variant; if compiling fails (no C++ compiler, an
    inductor error), warns once and runs ``fn`` itself (the same PyTorch code, uncompiled)."""
    if not _failed:
        try:
            return _compiled(fn, key)(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure; the plain call below re-raises real errors
            line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            _failed.append(f"{type(error).__name__}: {line}")
            warnings.warn(f"leanspike: compiling the LIF loops failed ({_failed[0]}); running them uncompiled",
                          RuntimeWarning, stacklevel=3)
    return fn(*args)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``[t, ...]`` as a contiguous ``[t, n]``."""
    return t.contiguous().view(t.shape[0], -1)


def _flat_step(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1)


def lif_forward(currents: torch.Tensor, carry: torch.Tensor | None, decay: float, v_threshold: float,
                reset: str, want_spikes: bool = True,
                want_potentials: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Spikes and potentials (each None unless wanted) of ``[T, ...]`` currents from ``carry``
    (shaped like one step; None: rest), and the last carry."""
    currents = currents.detach()
    chunks = _chunks(currents.shape[0])
    spikes = potentials = None
    if len(chunks) > 1:
        spikes = currents.new_empty(currents.shape) if want_spikes else None
        potentials = currents.new_empty(currents.shape) if want_potentials else None
    state = None if carry is None else _flat_step(carry.detach().to(currents.dtype))
    for t0, t1 in chunks:
        flat = _flat(currents[t0:t1])
        key = (*flat.shape, state is None, want_spikes, want_potentials, reset, currents.dtype)
        s, u, state = _run(_forward_loop, key, flat, state, float(decay), float(v_threshold), reset, want_spikes,
                           want_potentials)
        if len(chunks) == 1:
            spikes = None if s is None else s.view(currents.shape)
            potentials = None if u is None else u.view(currents.shape)
        else:
            for whole, part in ((spikes, s), (potentials, u)):
                if whole is not None:
                    whole[t0:t1].view(t1 - t0, -1).copy_(part)
    return spikes, potentials, state.view(currents.shape[1:])


def lif_backward(potentials: torch.Tensor, grad_spikes: torch.Tensor | None, grad_carry: torch.Tensor | None,
                 dyn: Any) -> torch.Tensor:
    """The contract of :func:`leanspike.neuron.lif_backward` (``dyn``: its ``Dynamics``) for the
    soft resets, or any reset without temporal routes: ``dL/du`` of every step."""
    if dyn.reset == "hard" and dyn.temporal_routes:
        raise ValueError("the compiled loop takes hard reset only without temporal routes")
    potentials = potentials.detach()
    if grad_spikes is not None:
        grad_spikes = grad_spikes.detach().to(potentials.dtype)
    upstream = None
    if grad_carry is not None and dyn.temporal_routes:
        upstream = _flat_step(grad_carry.detach().to(potentials.dtype).expand(potentials.shape[1:]))
    chunks = _chunks(potentials.shape[0])
    grad = potentials.new_empty(potentials.shape) if len(chunks) > 1 else None
    for t0, t1 in reversed(chunks):
        flat = _flat(potentials[t0:t1])
        key = (*flat.shape, grad_spikes is None, upstream is None, dyn.temporal_routes, potentials.dtype)
        part = _run(_backward_loop, key, flat, None if grad_spikes is None else _flat(grad_spikes[t0:t1]), upstream,
                    dyn.surrogate, float(dyn.decay), float(dyn.v_threshold), float(dyn.reset_weight),
                    dyn.temporal_routes)
        if grad is None:
            return part.view(potentials.shape)
        grad[t0:t1].view(t1 - t0, -1).copy_(part)
        upstream = part[0] if dyn.temporal_routes else None
    assert grad is not None
    return grad


# ------------------------------------------------------------------------------ batch norm + LIF
def norm_usable(x: torch.Tensor) -> bool:
    """Whether :func:`norm_lif_forward` takes ``x`` ``[T, B, C, ...]``: a float32/float64 CPU
    tensor of 2 to :data:`MAX_STEPS` steps."""
    return x.dim() >= 3 and usable(x) and x.shape[0] <= MAX_STEPS


def _norm_lif_forward_graph(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, carry: torch.Tensor | None,
                            mask: torch.Tensor | None, eps: float, decay: float, threshold: float, reset: str,
                            want_y: bool):
    """``[T, B, C, S]`` → the norm's output (None unless ``want_y``), spikes (times a dropout
    ``mask`` ``[B, C, S]`` shared by every step, when given), the last carry and each step's batch
    mean, biased variance and ``1/sqrt(var + eps)`` (``[T, C]``)."""
    mean = x.mean(dim=(1, 3))
    var = (x - mean[:, None, :, None]).square().mean(dim=(1, 3))
    invstd = torch.rsqrt(var + eps)
    ys = _normalise(x, weight, bias, mean, invstd)
    spikes, _, carry = _lif_steps(ys, carry, decay, threshold, reset)
    if mask is not None:
        spikes = [s * mask for s in spikes]
    return (torch.stack(ys) if want_y else None), torch.stack(spikes), carry, mean, var, invstd


def _normalise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
               invstd: torch.Tensor) -> list[torch.Tensor]:
    """Each step of ``x`` ``[T, B, C, S]`` normalised as PyTorch's CPU kernel does it,
    ``x·scale + shift`` (step by step: one fused loop with the LIF's)."""
    scale = invstd * weight
    shift = bias - mean * scale
    return [x[t] * scale[t][:, None] + shift[t][:, None] for t in range(x.shape[0])]


def _norm_lif_backward_graph(values: torch.Tensor, grad_spikes: torch.Tensor, upstream: torch.Tensor | None,
                             carry: torch.Tensor | None, mask: torch.Tensor | None, weight: torch.Tensor,
                             bias: torch.Tensor, mean: torch.Tensor | None, invstd: torch.Tensor, surrogate: Surrogate,
                             decay: float, threshold: float, reset: str, reset_weight: float, routes: bool):
    """Gradients of :func:`_norm_lif_forward_graph`: ``dL/dx``, ``dL/dweight``, ``dL/dbias`` and
    ``dL/du[0]`` (the initial carry's, with routes). ``values`` ``[T, B, C, S]`` is the norm's
    output ``y`` (``mean`` None: the normalised input is rebuilt as ``(y − bias) / weight``) or
    its input ``x`` (``y`` recomputed as the forward computed it, with its statistics);
    ``grad_spikes`` is the gradient of the masked spikes when the forward had a ``mask``."""
    if mask is not None:
        grad_spikes = [g * mask for g in grad_spikes.unbind(0)]  # type: ignore[assignment]
    if mean is None:
        ys = list(values.unbind(0))
        normalised = (values - bias[:, None]) / weight[:, None]
    else:
        ys = _normalise(values, weight, bias, mean, invstd)
        normalised = (values - mean[:, None, :, None]) * invstd[:, None, :, None]
    _, potentials, _ = _lif_steps(ys, carry, decay, threshold, reset)
    grad_y = torch.stack(_potential_grads(potentials, grad_spikes, upstream, surrogate, decay, threshold,
                                          reset_weight, routes))  # = dL/du: u = carry + y
    grad_bias = grad_y.sum(dim=(1, 3))
    grad_weight = (grad_y * normalised).sum(dim=(1, 3))
    count = values.shape[1] * values.shape[3]
    grad_x = (weight * invstd)[:, None, :, None] * (
        grad_y - (grad_bias / count)[:, None, :, None] - normalised * (grad_weight / count)[:, None, :, None])
    return grad_x, grad_weight.sum(0), grad_bias.sum(0), grad_y[0]


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, ...]`` as a contiguous ``[T, B, C, S]``."""
    return t.detach().contiguous().view(*t.shape[:3], -1)


def _step_4d(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """One step's tensor (a carry, a mask) as ``[B, C, S]`` in ``like``'s dtype."""
    return None if t is None else _as_4d(t.to(like.dtype)[None])[0]


def norm_lif_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, carry: torch.Tensor | None,
                     eps: float, dyn: Any, want_y: bool = True, mask: torch.Tensor | None = None):
    """A per-step batch norm (training statistics) then an LIF over ``x`` ``[T, B, C, ...]`` in one
    compiled loop: ``(y or None, spikes, last carry, mean, biased var, invstd)``; ``y`` and the
    spikes shaped like ``x``, the statistics ``[T, C]``; with a dropout ``mask`` (one step's
    shape), the spikes times it. Running statistics are the caller's."""
    flat = _as_4d(x)
    state, mask4 = _step_4d(carry, x), _step_4d(mask, x)
    key = (*flat.shape, state is None, mask is None, want_y, dyn.reset, x.dtype)
    y, spikes, last, mean, var, invstd = _run(_norm_lif_forward_graph, key, flat, weight.detach(), bias.detach(),
                                              state, mask4, float(eps), float(dyn.decay), float(dyn.v_threshold),
                                              dyn.reset, want_y)
    return (None if y is None else y.view(x.shape)), spikes.view(x.shape), last.view(x.shape[1:]), mean, var, invstd


def norm_lif_backward(values: torch.Tensor, grad_spikes: torch.Tensor | None, grad_last: torch.Tensor | None,
                      carry: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, invstd: torch.Tensor,
                      dyn: Any, mean: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The gradients of :func:`norm_lif_forward` (soft resets, or any reset without temporal
    routes): ``dL/dx``, ``dL/dweight``, ``dL/dbias``, ``dL/du[0]``. ``values``: the norm's output
    ``y``, or, with the forward's ``mean``, its input ``x`` (as a caller that kept neither
    recomputes it); ``mask``: the forward's dropout mask (``grad_spikes`` is then the masked
    spikes' gradient)."""
    if dyn.reset == "hard" and dyn.temporal_routes:
        raise ValueError("the compiled loop takes hard reset only without temporal routes")
    flat = _as_4d(values)
    dtype = values.dtype
    gs = _as_4d(grad_spikes.to(dtype)) if grad_spikes is not None else torch.zeros_like(flat)
    upstream = None
    if grad_last is not None and dyn.temporal_routes:
        upstream = _as_4d(grad_last.to(dtype).expand(values.shape[1:])[None])[0]
    state, mask4 = _step_4d(carry, values), _step_4d(mask, values)
    key = (*flat.shape, upstream is None, state is None, mask is None, mean is None, dyn.reset, dyn.temporal_routes,
           dtype)
    grad_x, grad_w, grad_b, grad_first = _run(
        _norm_lif_backward_graph, key, flat, gs, upstream, state, mask4, weight.detach(), bias.detach(),
        None if mean is None else mean.detach(), invstd.detach(), dyn.surrogate, float(dyn.decay),
        float(dyn.v_threshold), dyn.reset, float(dyn.reset_weight), dyn.temporal_routes)
    return grad_x.view(values.shape), grad_w, grad_b, grad_first.view(values.shape[1:])
