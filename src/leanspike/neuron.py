"""The discrete leaky integrate-and-fire neuron.

One time step, with ``I[t]`` the input current and ``λ`` the decay::

    u[t] = λ·(u[t-1] − V_th·s[t-1]) + I[t]      soft reset (default, SLTT Eq. 2)
    u[t] = λ·u[t-1]·(1 − s[t-1]) + I[t]         hard reset (SLTT supplement Eq. S10)
    u[t] = λ·u[t-1] − V_th·s[t-1] + I[t]        soft reset outside the leak
                                                (truncated-local paper Eq. 1)
    s[t] = H(u[t] − V_th)

``λ = 1 − 1/τ`` when built from ``tau``; the truncated-local paper gives ``λ``
directly as its leak factor, so ``decay`` is accepted too.

The neuron keeps one tensor of state, the *carry* ``c[t] = u[t+1] − I[t+1]``, i.e.
everything the next step inherits. Detaching the carry removes every temporal route
(through ``u`` and through ``s``) at once, which is exactly SLTT's approximation.

With autograd on, a step (or a whole sequence, :meth:`LIF.forward_sequence`) is one
autograd function that saves only the membrane potentials ``u`` (one float per neuron
and step); spikes, surrogate derivatives and reset terms are recomputed from ``u`` in
backward. The forward values are bit for bit those of the plain equations above.
A single step whose backward runs before the layer's next step (SLTT's, inside the
engine: :func:`backward_reads_carry`) keeps less: its spikes as bits, with ``u``
rebuilt from the carry the layer holds for that next step anyway (:class:`LIFStep`).

On CUDA tensors, when Triton is installed, the time loop runs as one kernel per
direction (:mod:`leanspike.lif_triton`) instead of a few kernels per step; the values are
the same (the forward's bit for bit). ``USE_TRITON = False`` keeps the tensor path. On CPU
tensors, :func:`compile_lif` (opt-in) runs it as loops compiled by ``torch.compile``
(:mod:`leanspike.lif_compiled`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from functools import cache, lru_cache
from types import ModuleType
from typing import Iterator, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from . import lif_compiled
from .compact import bit_table, mark_binary, pack_comparison, unpack_bits
from .errors import UserError
from .state import Stateful
from .surrogate import Surrogate, Triangle, make_surrogate

RESET_MODES = ("soft", "hard", "soft-unleaked")
#: run the time loop of CUDA tensors as Triton kernels when Triton is installed
USE_TRITON = True
#: run the time loops of CPU tensors as compiled loops (:mod:`leanspike.lif_compiled`; set it
#: with :func:`compile_lif`, which checks for a compiler)
COMPILE_CPU = False


@cache
def _triton_kernels() -> ModuleType | None:
    """:mod:`leanspike.lif_triton`, imported on first use (None without Triton)."""
    try:
        from . import lif_triton
    except ImportError:
        return None
    return lif_triton


def compiled_lif_enabled() -> bool:
    """Whether LIF time loops of CPU tensors run compiled (:func:`compile_lif`)."""
    return COMPILE_CPU


def compile_lif(enabled: bool = True) -> bool:
    """Run the LIF time loops (and per-step batch norm + LIF (+ dropout) functions) of CPU
    tensors over two steps or more, where they build a graph, as compiled loops
    (:mod:`leanspike.lif_compiled`): VGG-11's BPTT at batch 8 took 0.91–0.92× the time at
    T = 6 and 0.85× at T = 10 (docs/performance.md); the first iterations compile (about
    30 s, cached on disk). Returns the previous setting. Enabling needs a C++
    compiler (``$CXX``, or ``g++`` / ``clang++`` on ``PATH``) for ``torch.compile``'s CPU
    backend: without one, a :class:`~leanspike.errors.UserError` says so."""
    global COMPILE_CPU
    if enabled and not _cpp_compiler():
        raise UserError("compile_lif needs a C++ compiler for torch.compile's CPU backend ($CXX, or g++ or "
                        "clang++ on PATH); none found")
    previous, COMPILE_CPU = COMPILE_CPU, bool(enabled)
    return previous


@contextlib.contextmanager
def compiled_lif(enabled: bool = True) -> Iterator[None]:
    """:func:`compile_lif` while the block runs, then the previous setting again."""
    previous = compile_lif(enabled)
    try:
        yield
    finally:
        compile_lif(previous)


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would call, if there is one."""
    named = os.environ.get("CXX")
    for name in ([named] if named else []) + ["g++", "clang++"]:
        found = shutil.which(name)
        if found:
            return found
    return None


@cache
def _triton_device(index: int) -> bool:
    """Triton compiles for NVIDIA GPUs of compute capability 7.0 and later (and for ROCm)."""
    return torch.version.hip is not None or torch.cuda.get_device_capability(index) >= (7, 0)


def _kernels_for(tensor: torch.Tensor, compiled: bool = True) -> ModuleType | None:
    if tensor.device.type == "cpu":
        if not (compiled and COMPILE_CPU):
            return None
        return lif_compiled if lif_compiled.usable(tensor) else None
    if not (USE_TRITON and tensor.is_cuda):
        return None
    kernels = _triton_kernels()
    if kernels is None or not kernels.usable(tensor) or not _triton_device(tensor.device.index or 0):
        return None
    return kernels


class Dynamics(NamedTuple):
    """The constants of one LIF layer, as the fused functions need them."""

    decay: float
    v_threshold: float
    reset: str
    surrogate: Surrogate
    detach_reset: bool
    temporal_routes: bool = True  # False: backward keeps only each step's own route (SLTT)

    @property
    def reset_weight(self) -> float:
        """``k`` in a soft reset's ``∂c/∂u = λ − k·h``: λ·V_th, V_th outside the leak, 0 if detached."""
        if self.detach_reset:
            return 0.0
        return self.decay * self.v_threshold if self.reset == "soft" else self.v_threshold


def _next_carry(u: torch.Tensor, s: torch.Tensor, dyn: Dynamics) -> torch.Tensor:
    """``c[t]`` from ``u[t]`` and ``s[t]`` (the same operations, so the same rounding, as the equations)."""
    if dyn.reset == "soft":
        return torch.sub(u, s, alpha=dyn.v_threshold).mul_(dyn.decay)
    if dyn.reset == "hard":
        return (dyn.decay * u).mul_(1 - s)
    return torch.sub(dyn.decay * u, s, alpha=dyn.v_threshold)


def lif_forward(currents: torch.Tensor, carry: torch.Tensor | None, dyn: Dynamics,
                potentials: torch.Tensor | None = None, spikes: torch.Tensor | None = None,
                compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``[T, ...]`` currents from ``carry`` (None: rest); return spikes and the last carry.

    ``potentials``, when given (shaped like ``currents``), receives every ``u[t]``. ``spikes``
    is where the tensor path writes the spikes, step by step (default: a new tensor; a
    caller that wants only ``u`` may pass one step's buffer expanded over T, or better
    call :func:`lif_potentials`); the kernels make their own, so use the returned spikes.
    ``compiled=False``: not the compiled CPU loops even when :func:`compile_lif` is on.
    No autograd graph is built: callers run it under ``no_grad`` or inside a Function.
    """
    kernels = _kernels_for(currents, compiled)
    if kernels is not None and (carry is None or carry.shape == currents.shape[1:]) \
            and (potentials is None or potentials.is_contiguous()):
        if kernels is lif_compiled:
            made, u, last = kernels.lif_forward(currents, carry, dyn.decay, dyn.v_threshold, dyn.reset,
                                                want_potentials=potentials is not None)
            if potentials is not None:
                potentials.copy_(u)
            return made, last
        return kernels.lif_forward(currents, carry, dyn.decay, dyn.v_threshold, dyn.reset, potentials)
    if spikes is None:
        spikes = torch.empty_like(currents)
    for t in range(currents.shape[0]):
        if carry is None:
            u = currents[t] if potentials is None else potentials[t].copy_(currents[t])
        else:
            u = torch.add(carry, currents[t], out=potentials[t]) if potentials is not None else carry + currents[t]
        s = spikes[t]
        torch.ge(u, dyn.v_threshold, out=s)  # H(u − V_th): u − V_th ≥ 0 ⇔ u ≥ V_th exactly
        carry = _next_carry(u, s, dyn)
    assert carry is not None
    return spikes, carry


def lif_potentials(currents: torch.Tensor, carry: torch.Tensor | None, dyn: Dynamics, want_spikes: bool = True,
                   potentials: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`lif_forward` for callers that want every ``u[t]``: spikes (None unless
    ``want_spikes``), potentials and the last carry. ``potentials``: a contiguous buffer the
    tensor path may write ``u`` into (it may be ``currents`` itself, overwritten step by step
    after each is read); the compiled loops return their own."""
    kernels = _kernels_for(currents)
    if kernels is lif_compiled and (carry is None or carry.shape == currents.shape[1:]):
        made, u, last = kernels.lif_forward(currents, carry, dyn.decay, dyn.v_threshold, dyn.reset,
                                            want_spikes=want_spikes, want_potentials=True)
        return made, u, last
    if potentials is None:
        potentials = torch.empty_like(currents)
    scratch = None if want_spikes else torch.empty_like(currents[0]).expand_as(currents)  # one step's buffer
    made, last = lif_forward(currents, carry, dyn, potentials, scratch)
    return (made if want_spikes else None), potentials, last


def lif_backward(potentials: torch.Tensor, grad_spikes: torch.Tensor | None, grad_carry: torch.Tensor | None,
                 dyn: Dynamics, overwrite: bool = False) -> torch.Tensor:
    """Gradient w.r.t. every ``u[t]`` (= w.r.t. ``I[t]``; at t = 0 also w.r.t. the initial carry).

    ``dL/du[t] = dL/ds[t]·h[t] + dL/du[t+1]·∂c[t]/∂u[t]`` with ``h`` the surrogate derivative
    at ``u[t] − V_th``; the last step receives ``grad_carry`` (the final carry's gradient).
    For the soft resets ``∂c/∂u = λ − k·h`` (k = λ·V_th, or V_th outside the leak; 0 when the
    reset is detached), so ``dL/du[t] = h·(dL/ds − k·dL/du[t+1]) + λ·dL/du[t+1]``.

    ``overwrite``: ``potentials`` is the caller's own buffer, which the tensor path may reuse
    for the gradient (soft resets, or no temporal routes) instead of allocating another.
    """
    lam, th = dyn.decay, dyn.v_threshold
    kernels = _kernels_for(potentials)
    if kernels is not None and not (dyn.reset == "hard" and dyn.temporal_routes) \
            and (grad_spikes is not None or (dyn.temporal_routes and grad_carry is not None)):
        return kernels.lif_backward(potentials, grad_spikes, grad_carry, dyn)
    if not dyn.temporal_routes:  # dL/du[t] = dL/ds[t]·h[t]: every step as if its carry were detached
        if grad_spikes is None:
            return torch.zeros_like(potentials)
        return dyn.surrogate.derivative_(potentials.sub_(th) if overwrite else potentials - th).mul_(grad_spikes)
    if dyn.reset == "hard":
        return _hard_backward(potentials, grad_spikes, grad_carry, dyn)
    grad = dyn.surrogate.derivative_(potentials.sub_(th) if overwrite else potentials - th)  # h, then dL/du
    k = dyn.reset_weight
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(potentials)
    upstream = grad_carry
    scratch = None
    for t in range(potentials.shape[0] - 1, -1, -1):
        g = grad[t]
        if upstream is None:
            g.mul_(grad_spikes[t])
        else:
            if k:
                scratch = torch.add(grad_spikes[t], upstream, alpha=-k, out=scratch)
                g.mul_(scratch)
            else:
                g.mul_(grad_spikes[t])
            g.add_(upstream, alpha=lam)
        upstream = g
    return grad


def _hard_backward(potentials: torch.Tensor, grad_spikes: torch.Tensor | None, grad_carry: torch.Tensor | None,
                   dyn: Dynamics) -> torch.Tensor:
    """Hard reset, ``c = λ·u·(1 − s)``: ``∂c/∂u = λ·(1 − s) − λ·u·h`` (the second term unless detached)."""
    x = potentials - dyn.v_threshold
    deriv = dyn.surrogate.derivative(x)
    grad = grad_spikes * deriv if grad_spikes is not None else torch.zeros_like(potentials)
    if potentials.shape[0] == 1 and grad_carry is None:
        return grad
    lam = dyn.decay
    route = (x < 0).to(potentials.dtype).mul_(lam)  # λ·(1 − s)
    if not dyn.detach_reset:
        route.sub_(deriv.mul_(potentials).mul_(lam))
    upstream = grad_carry
    for t in range(potentials.shape[0] - 1, -1, -1):
        if upstream is not None:
            grad[t].addcmul_(upstream, route[t])
        upstream = grad[t]
    return grad


#: set by :func:`backward_reads_carry`: one-step calls keep their spikes as bits instead of ``u``
_CARRY_BACKWARD = False


@contextlib.contextmanager
def backward_reads_carry(enabled: bool = True) -> Iterator[None]:
    """While active, a one-step LIF call that builds a graph (soft resets, decay > 0, the
    tensor path) runs as :class:`LIFStep`, whose backward rebuilds ``u`` from the carry the
    layer holds. The engine enters it around each one-step interval with a graph (SLTT,
    SLTT-K's graph steps), where backward runs before the layer's next step; the layer
    keeps that carry for its next step anyway, so the step keeps one bit per neuron for
    backward instead of one float."""
    global _CARRY_BACKWARD
    previous, _CARRY_BACKWARD = _CARRY_BACKWARD, bool(enabled)
    try:
        yield
    finally:
        _CARRY_BACKWARD = previous


def rebuilds_from_carry(dyn: Dynamics) -> bool:
    """Whether ``u[t]`` follows from the carry ``c[t]`` and the spikes ``s[t]``: a soft reset
    with ``λ > 0`` (a hard reset's carry forgets ``u`` where the neuron fired)."""
    return dyn.reset != "hard" and dyn.decay > 0


@lru_cache(maxsize=32)
def _table(off: float, on: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`~leanspike.compact.bit_table`, made once per layer constants (LIFStep's backward)."""
    return bit_table(off, on, dtype, device)


class LIFStep(torch.autograd.Function):
    """One step, ``[1, ...]`` currents (+ carry) → spikes and the carry, keeping for backward
    only the spikes, packed 8 to a byte, and a reference to the carry it returns (which the
    layer holds for its next step). Backward rebuilds the surrogate's input from them:
    ``u − V_th = c/λ − V_th·(1 − s)`` (soft reset, ``c = λ·(u − V_th·s)``) or
    ``c/λ + (V_th/λ − V_th)·s − V_th·(1 − s)`` (outside the leak, ``c = λ·u − V_th·s``).
    Forward values are those of :class:`LIFSequence` bit for bit; the rebuilt ``u − V_th`` is
    too when ``λ`` is a power of two (``c/λ`` is then exact), else equal to 1–2 roundings."""

    @staticmethod
    def forward(ctx, currents: torch.Tensor, carry: torch.Tensor | None, dyn: Dynamics):  # type: ignore[override]
        u = currents[0] if carry is None else carry + currents[0]
        spikes = torch.ge(u, dyn.v_threshold, out=torch.empty_like(u))  # H(u − V_th), as lif_forward
        ctx.save_for_backward(pack_comparison(u.detach(), "ge", dyn.v_threshold))  # the spikes as bits
        if carry is not None and dyn.reset == "soft":  # u is ours: the carry in its place, same operations
            last = u.sub_(spikes, alpha=dyn.v_threshold).mul_(dyn.decay)
        else:
            last = _next_carry(u, spikes, dyn)
        # not saved through autograd: the layer holds this carry until its next step, and the
        # engine runs backward before that (a detached alias: holding the output itself would
        # make a reference cycle through this node)
        ctx.carry = last.detach()
        ctx.version, ctx.shape, ctx.dyn = last._version, u.shape, dyn
        ctx.set_materialize_grads(False)
        return spikes.unsqueeze(0), last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_last):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        carry: torch.Tensor = ctx.carry
        dyn: Dynamics = ctx.dyn
        if carry._version != ctx.version:
            raise RuntimeError("an LIF layer's carry was modified in place between a one-step forward and its "
                               "backward, which rebuilds u from it (leanspike.neuron.backward_reads_carry)")
        th, lam = dyn.v_threshold, dyn.decay
        fired = th / lam - th if dyn.reset == "soft-unleaked" else 0.0
        table = _table(-th, fired, carry.dtype, carry.device)
        x = unpack_bits(packed, carry.numel(), table).view(ctx.shape).add_(carry, alpha=1.0 / lam)  # u − V_th
        routes = dyn.temporal_routes and grad_last is not None
        if grad_spikes is None and not routes:
            grad = torch.zeros_like(x)
        else:
            h = dyn.surrogate.derivative_(x)
            k = dyn.reset_weight
            # dL/du = h·(dL/ds − k·dL/dc) + λ·dL/dc (lif_backward's step)
            g = grad_spikes[0] if grad_spikes is not None else torch.zeros_like(h)
            grad = h.mul_(torch.add(g, grad_last, alpha=-k) if routes and k else g)
            if routes:
                grad.add_(grad_last, alpha=lam)
        grad_carry = grad.clone() if ctx.needs_input_grad[1] and dyn.temporal_routes else None
        return grad.unsqueeze(0), grad_carry, None


class LIFSequence(torch.autograd.Function):
    """``[T, ...]`` currents (+ initial carry) → spikes and the last carry; saves ``u`` only."""

    @staticmethod
    def forward(ctx, currents: torch.Tensor, carry: torch.Tensor | None, dyn: Dynamics):  # type: ignore[override]
        spikes, potentials, last = lif_potentials(currents, carry, dyn)
        ctx.save_for_backward(potentials)
        ctx.dyn = dyn
        ctx.set_materialize_grads(False)
        return spikes, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_last):  # type: ignore[override]
        (potentials,) = ctx.saved_tensors
        grad = lif_backward(potentials, grad_spikes, grad_last, ctx.dyn)
        grad_carry = grad[0].clone() if ctx.needs_input_grad[1] and ctx.dyn.temporal_routes else None
        return grad, grad_carry, None


class LIF(Stateful):
    """Stateful LIF layer that processes one time step per call."""

    def __init__(
        self,
        tau: float | None = None,
        *,
        decay: float | None = None,
        v_threshold: float = 1.0,
        reset: str = "soft",
        surrogate: Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        if tau is not None and decay is not None:
            raise ValueError("give either tau or decay, not both")
        if tau is None and decay is None:
            tau = 1.1
        if tau is not None:
            if tau < 1:
                raise ValueError(f"tau must be >= 1 (decay = 1 - 1/tau), got {tau}")
            decay = 1.0 - 1.0 / tau
        assert decay is not None
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if v_threshold <= 0:
            raise ValueError(f"v_threshold must be > 0, got {v_threshold}")
        if reset not in RESET_MODES:
            raise ValueError(f"reset must be one of {RESET_MODES}, got {reset!r}")
        if surrogate is None:
            surrogate = Triangle(width=v_threshold)
        elif isinstance(surrogate, str):
            surrogate = make_surrogate(surrogate, v_threshold=v_threshold)
        self.decay = float(decay)
        self.v_threshold = float(v_threshold)
        self.reset = reset
        self.surrogate = surrogate
        self.detach_reset = detach_reset
        self.carry: torch.Tensor | None = None
        self.temporal_routes = True

    def extra_repr(self) -> str:
        return (f"decay={self.decay:.4g}, v_threshold={self.v_threshold}, reset={self.reset}, "
                f"surrogate={self.surrogate}")

    def dynamics(self) -> Dynamics:
        return Dynamics(self.decay, self.v_threshold, self.reset, self.surrogate, self.detach_reset,
                        self.temporal_routes)

    def reset_state(self) -> None:
        self.carry = None

    def detach_state(self) -> None:
        if self.carry is not None:
            self.carry = self.carry.detach()

    def keep_temporal_routes(self, keep: bool) -> None:
        self.temporal_routes = keep

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if not self.temporal_routes:
            self.detach_state()
        return mark_binary(self.forward_sequence(current.unsqueeze(0))[0])

    def forward_sequence(self, currents: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...]`` currents → ``[T, B, ...]`` spikes; the same as T calls of ``forward``."""
        carry = self.carry
        if carry is not None and carry.shape != currents.shape[1:]:  # broadcast as ``carry + current`` would
            shape = torch.broadcast_shapes(carry.shape, currents.shape[1:])
            currents, carry = currents.expand(currents.shape[0], *shape), carry.expand(shape)
        if torch.is_grad_enabled() and (currents.requires_grad or (carry is not None and carry.requires_grad)):
            dyn = self.dynamics()
            if (_CARRY_BACKWARD and currents.shape[0] == 1 and rebuilds_from_carry(dyn)
                    and _kernels_for(currents) is None):
                spikes, self.carry = LIFStep.apply(currents, carry, dyn)
            else:
                spikes, self.carry = LIFSequence.apply(currents, carry, dyn)
        else:
            with torch.no_grad():  # not compiled: no-grad runs (SLTT-K's skipped steps) vary in length,
                # and every new length would compile anew, for no gain (forward only: 0.99×)
                spikes, self.carry = lif_forward(currents, carry, self.dynamics(), compiled=False)
        return mark_binary(spikes)
