"""Predicting each method's peak memory from a few cheap steps, and planning within a budget.

Every training method keeps, at its peak, the autograd graph of its longest interval: k
steps for TBPTT(k) and the local method, all T for BPTT, one step for SLTT and SLTT-K
(steps outside the K sampled ones build no graph). The graph of a step grows linearly
with the batch, so the saved bytes follow ``bytes(k, B) = B·(a·k + b) + c·k + d``.
:func:`calibrate` measures BPTT's saved bytes (:class:`~leanspike.measure.SavedTensorMeter`,
parameters, buffers and the input left out) at T ∈ {1, 2, 3} and B ∈ {1, 2} and fits that
line through T = 2 and 3; :meth:`MemoryModel.saved_bytes` then predicts any method at any T
and batch. One-step intervals (SLTT's) get their own measured ``B·p + q``: over two steps or
more, some layer pairs keep one tensor where a lone step keeps two
(:mod:`~leanspike.norm_lif`, :class:`~leanspike.multistep.InputConvNormLIF`), while a lone
step's LIF layers keep their spikes as bits only (:class:`~leanspike.neuron.LIFStep`), so one
step is not on the line through longer intervals; an interval that starts from a previous one's state
keeps those pairs' carry in too, measured from TBPTT(2) at T = 4. The local
method's engine runs one block at a time (forward over the interval, backward, next block),
so its peak is its largest block's graph with that block's classifier: a line of the same
form, calibrated per block size n from the local method itself (``local_ns``).

:func:`plan` adds what exists whatever the method (weights, gradients, optimizer slots, the
input batch, a workspace estimate) and lists the candidate settings in order of expected
accuracy cost, marking those that fit the budget (see docs/costs.md for the ordering).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .costs import ModelProfile, profile_model
from .errors import UserError
from .measure import SavedTensorMeter
from .methods import BPTT, SLTT, SLTTK, TBPTT, Method, TruncatedLocalBPTT
from .multistep import one_step_path, pays_off

METHODS = ("bptt", "tbptt", "sltt", "sltt-k", "local")
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"4GiB"``, ``"512 MiB"``, ``"2GB"``, ``"1e9"`` → bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UserError(f"--budget: expected a size such as 4GiB, 512MiB or 2GB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2x128x128"`` or ``"2×128×128"`` → ``(2, 128, 128)``."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UserError(f"--input: expected CxHxW with positive integers (e.g. 1x28x28), got {text!r}")
    return shape


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A method with its parameters: k for tbptt/local, n for local, K for sltt-k."""

    method: str
    k: int | None = None
    n: int | None = None
    K: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        need = {"tbptt": ("k",), "local": ("k", "n"), "sltt-k": ("K",)}.get(self.method, ())
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"method {self.method!r} needs {name}")

    def interval(self, T: int) -> int:
        """Steps whose graph is alive at once."""
        if self.method == "bptt":
            return T
        if self.method in ("tbptt", "local"):
            return min(int(self.k), T)  # type: ignore[arg-type]
        return 1

    def label(self) -> str:
        if self.method == "tbptt":
            return f"tbptt(k={self.k})"
        if self.method == "sltt-k":
            return f"sltt-k(K={self.K})"
        if self.method == "local":
            return f"local(k={self.k}, n={self.n})"
        return self.method

    def build(self, classifier: str = "trainable") -> Method:
        if self.method == "bptt":
            return BPTT()
        if self.method == "tbptt":
            return TBPTT(int(self.k))  # type: ignore[arg-type]
        if self.method == "sltt":
            return SLTT()
        if self.method == "sltt-k":
            return SLTTK(int(self.K), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
        return TruncatedLocalBPTT(int(self.k), int(self.n), classifier=classifier)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Measuring and fitting saved bytes
# --------------------------------------------------------------------------------------
def measure_saved_bytes(model: nn.Module, method: Method, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Peak bytes autograd keeps during one batch of ``method.compute_gradients``,
    leaving out parameters and buffers (model's and method's) and the input batch."""
    method.engine(model, inputs)  # builds lazy local classifiers, so they can be left out
    extra = [m for m in (getattr(method, "heads", None) or []) if m is not None]
    with SavedTensorMeter(exclude=[model, *extra, inputs]) as meter:
        method.compute_gradients(model, inputs, targets)
    return meter.peak_bytes


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(model.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())


def random_batch(model: nn.Module, input_shape: Sequence[int], T: int, batch: int, num_classes: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[T, B, *input_shape]`` and labels: saved bytes do not depend on the values."""
    device, dtype = _placement(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, batch, *input_shape, generator=g, dtype=dtype).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return x, y


def _affine(coef: Sequence[float], batch: int) -> float:
    """``B·p + q`` of ``coef = [p, q]``."""
    return batch * coef[0] + coef[1]


@dataclass
class IntervalFit:
    """Saved bytes of one interval of k steps, for one kind of graph (the whole network's, or
    the local method's largest block with its classifier), as fitted by :func:`fit_memory_model`.

    ``line`` ``[a, b, c, d]``: ``B·(a·k + b) + c·k + d``, for every k when ``one_step`` is
    None, else for k ≥ 2. ``one_step`` ``[p, q]``: ``B·p + q`` for k = 1, measured apart (over
    two steps or more some layer pairs keep one tensor where a lone step keeps two:
    :mod:`~leanspike.norm_lif`, :class:`~leanspike.multistep.InputConvNormLIF`). ``carry``
    ``[p, q]``: what an interval of two steps or more keeps in addition when it starts from
    the state a previous interval left (those pairs keep the carry in to rebuild ``u``).
    """

    line: list[float]
    one_step: list[float] | None = None
    carry: list[float] | None = None

    def interval(self, k: int, batch: int, carried: bool = False) -> float:
        if k == 1 and self.one_step is not None:
            return _affine(self.one_step, batch)
        a, b, c, d = self.line
        extra = _affine(self.carry, batch) if carried and k >= 2 and self.carry is not None else 0.0
        return batch * (a * k + b) + c * k + d + extra

    def peak(self, T: int, k: int, batch: int) -> float:
        """The largest interval of ``split_intervals(T, k)``: the first from rest, the others
        from a carry (the last may be shorter)."""
        first = self.interval(min(k, T), batch)
        if k >= T:
            return first
        rest = self.interval(k, batch, carried=True) if T >= 2 * k else 0.0
        return max(first, rest, self.interval(T % k, batch, carried=True) if T % k else 0.0)

    def as_dict(self) -> dict:
        return {"line": self.line, "one_step": self.one_step, "carry": self.carry}


@dataclass
class MemoryModel:
    """``saved(k, B) = B·(per_sample_step·k + per_sample) + per_step·k + const`` bytes for the
    whole network's graph (``fit``, when calibrated, refines it: :class:`IntervalFit`).

    ``local`` holds an :class:`IntervalFit` per block size n, fitted on the local method's
    own peaks; a local setting without one is bounded by the whole network's graph plus one
    LIF tensor per classifier (blocks never hold more than that together).
    """

    per_sample_step: float
    per_sample: float
    per_step: float = 0.0
    const: float = 0.0
    head_per_sample_step: float = 0.0  # one local classifier's LIF, per sample and step
    depth: int = 1
    points: list[dict] = field(default_factory=list)
    local: dict[int, IntervalFit] = field(default_factory=dict)
    fit: IntervalFit | None = None

    def _whole(self) -> IntervalFit:
        return self.fit or IntervalFit([self.per_sample_step, self.per_sample, self.per_step, self.const])

    def heads(self, n: int) -> int:
        return math.ceil(self.depth / n) - 1

    def saved_bytes(self, setting: Setting, T: int, batch: int) -> float:
        k = setting.interval(T)
        if setting.method != "local" or int(setting.n) >= self.depth:  # type: ignore[arg-type]
            return self._whole().peak(T, k, batch)
        n = int(setting.n)  # type: ignore[arg-type]
        if n in self.local:
            return self.local[n].peak(T, k, batch)
        return self._whole().peak(T, k, batch) + self.heads(n) * batch * self.head_per_sample_step * k

    def as_dict(self) -> dict:
        return {"per_sample_step": self.per_sample_step, "per_sample": self.per_sample, "per_step": self.per_step,
                "const": self.const, "head_per_sample_step": self.head_per_sample_step, "depth": self.depth,
                "points": self.points, "local": {str(n): f.as_dict() for n, f in self.local.items()},
                "fit": self.fit.as_dict() if self.fit else None}


def _fit_line(points: Sequence[tuple[int, int, float]]) -> list[float]:
    """Least-squares ``bytes = B·(a·k + b) + c·k + d`` through ``(k, batch, bytes)`` points.

    With one batch size only, the batch-independent terms cannot be told apart and the
    bytes are taken as proportional to the batch.
    """
    ks = {p[0] for p in points}
    bs = {p[1] for p in points}
    if len(ks) < 2:
        raise ValueError(f"calibration needs at least two interval lengths, got {sorted(ks)}")
    full = len(bs) >= 2 and len({(p[0], p[1]) for p in points}) >= 4
    rows = [[b * k, b, k, 1.0] if full else [b * k, b] for k, b, _ in points]
    coef, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array([p[2] for p in points], dtype=float),
                               rcond=None)
    return [float(v) for v in coef] + [0.0] * (4 - len(coef))


def _fit_affine(points: Sequence[tuple[int, float]]) -> list[float]:
    """``bytes = B·p + q`` through ``(batch, bytes)`` points (``q = 0`` with one batch size)."""
    if len({p[0] for p in points}) < 2:
        return [sum(v / b for b, v in points) / len(points), 0.0]
    coef, *_ = np.linalg.lstsq(np.array([[b, 1.0] for b, _ in points], dtype=float),
                               np.array([v for _, v in points], dtype=float), rcond=None)
    return [float(v) for v in coef]


def _fit_interval(points: Sequence[tuple[int, int, float]],
                  carried: Sequence[tuple[int, int, float]] = ()) -> IntervalFit:
    """The line through the points of two steps or more and one steps' own fit (when there are
    two longer interval lengths to draw the line; else one line through all), and the carry:
    ``carried`` holds ``(k, batch, bytes)`` of intervals that start from a carry."""
    longer = [p for p in points if p[0] >= 2]
    ones = [p for p in points if p[0] == 1]
    if len({p[0] for p in longer}) >= 2 and ones:
        fit = IntervalFit(_fit_line(longer), _fit_affine([(b, v) for _, b, v in ones]))
    else:
        fit = IntervalFit(_fit_line(points))
    if carried:
        fit.carry = _fit_affine([(b, v - fit.interval(k, b)) for k, b, v in carried])
    return fit


def fit_memory_model(points: Sequence[tuple[int, int, float]], profile: ModelProfile,
                     local: dict[int, Sequence[tuple[int, int, float]]] | None = None,
                     carried: Sequence[tuple[int, int, float]] = (),
                     local_carried: dict[int, Sequence[tuple[int, int, float]]] | None = None) -> MemoryModel:
    """Fit measured ``(k, batch, bytes)`` points: BPTT's, and the local method's per block size;
    ``carried`` (and ``local_carried``): peaks of TBPTT(k) (the local method) over 2k steps,
    whose second interval starts from a carry."""
    fit = _fit_interval(points, carried)
    head = profile.num_classes * profile.itemsize
    local_fits = {n: _fit_interval(p, (local_carried or {}).get(n, ())) for n, p in (local or {}).items()}
    return MemoryModel(*fit.line, head, profile.depth, [{"k": k, "batch": b, "bytes": v} for k, b, v in points],
                       local_fits, fit)


def calibrate(model: nn.Module, input_shape: Sequence[int], num_classes: int, steps: Sequence[int] = (1, 2, 3),
              batches: Sequence[int] = (1, 2), profile: ModelProfile | None = None,
              local_ns: Sequence[int] = (), paths_of_batch: int | None = None) -> MemoryModel:
    """Measure BPTT's saved bytes at each (T, batch), and the local method's (k = T) for each
    block size in ``local_ns`` below the depth; with 2 among ``steps``, also both over two
    intervals of 2 steps (T = 4: the second starts from a carry); fit a :class:`MemoryModel`.

    ``paths_of_batch``: measure on the engine paths a run at that batch takes (one-step
    intervals of small inputs run step by step, :func:`~leanspike.multistep.pays_off`, and keep
    more); default: the calibration batches' own paths."""
    if paths_of_batch is not None:
        layered = pays_off(1, paths_of_batch * math.prod(input_shape))
        with one_step_path(layered):
            return calibrate(model, input_shape, num_classes, steps, batches, profile, local_ns)
    profile = profile or profile_model(model, input_shape, num_classes)
    points: list[tuple[int, int, float]] = []
    carried: list[tuple[int, int, float]] = []
    ns = [n for n in sorted(set(local_ns)) if n < profile.depth]
    local: dict[int, list[tuple[int, int, float]]] = {n: [] for n in ns}
    local_carried: dict[int, list[tuple[int, int, float]]] = {n: [] for n in ns}
    for b in batches:
        for t in steps:
            x, y = random_batch(model, input_shape, t, b, num_classes)
            points.append((t, b, float(measure_saved_bytes(model, BPTT(), x, y))))
            for n, found in local.items():
                found.append((t, b, float(measure_saved_bytes(model, TruncatedLocalBPTT(t, n), x, y))))
        if 2 in steps:
            x, y = random_batch(model, input_shape, 4, b, num_classes)
            carried.append((2, b, float(measure_saved_bytes(model, TBPTT(2), x, y))))
            for n, found in local_carried.items():
                found.append((2, b, float(measure_saved_bytes(model, TruncatedLocalBPTT(2, n), x, y))))
    return fit_memory_model(points, profile, local, carried, local_carried)


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------
def _halvings(top: int, low: int = 1) -> list[int]:
    """``top, top/2, top/4, ... ≥ low``, distinct and descending."""
    out, v = [], top
    while v >= low:
        if v not in out:
            out.append(v)
        v //= 2
    return out


def candidates(T: int, depth: int) -> list[Setting]:
    """Settings in order of expected accuracy cost (docs/costs.md explains the order)."""
    out = [Setting("bptt")]
    out += [Setting("tbptt", k=k) for k in _halvings(T // 2, 2) if k < T]
    out.append(Setting("sltt"))
    out += [Setting("sltt-k", K=K) for K in _halvings(T // 2, 1) if K < T]
    for n in _halvings(depth // 2 if depth > 1 else 1, 1):
        if n >= depth:
            continue
        out += [Setting("local", k=k, n=n) for k in _halvings(T, 1)]
    return out


@dataclass
class PlanRow:
    setting: Setting
    saved: float  # predicted peak saved-activation bytes
    fixed: float  # weights, gradients, optimizer slots, input batch
    workspace: float  # estimate of transient tensors
    rank: int
    fits: bool = False

    @property
    def total(self) -> float:
        return self.saved + self.fixed + self.workspace

    def as_dict(self) -> dict:
        s = self.setting
        return {"rank": self.rank, "setting": s.label(), "method": s.method, "k": s.k, "n": s.n, "K": s.K,
                "saved_bytes": self.saved, "fixed_bytes": self.fixed, "workspace_bytes": self.workspace,
                "total_bytes": self.total, "fits": self.fits}


def _head_params(profile: ModelProfile, n: int) -> int:
    """Trainable parameters of the local classifiers for blocks of n units."""
    c = profile.num_classes
    tops = [min(start + n, profile.depth) - 1 for start in range(0, profile.depth, n)][:-1]
    return sum(profile.units[i].out_features * c + c for i in tops)


def plan(model: nn.Module, input_shape: Sequence[int], num_classes: int, T: int, batch: int, budget: float,
         optimizer: str = "momentum", memory: MemoryModel | None = None,
         settings: Sequence[Setting] | None = None) -> tuple[list[PlanRow], MemoryModel]:
    """Predicted peak memory of every candidate setting and whether it fits ``budget``."""
    if optimizer not in OPTIMIZER_SLOTS:
        raise UserError(f"--optimizer: expected one of {', '.join(OPTIMIZER_SLOTS)}, got {optimizer!r}")
    if T < 1 or batch < 1:
        raise UserError(f"--T and --batch must be >= 1, got T={T}, batch={batch}")
    profile = profile_model(model, input_shape, num_classes)
    chosen = list(settings if settings is not None else candidates(T, profile.depth))
    if memory is None:
        ns = sorted({int(s.n) for s in chosen if s.method == "local"})  # type: ignore[arg-type]
        try:
            memory = calibrate(model, input_shape, num_classes, profile=profile, local_ns=ns, paths_of_batch=batch)
        except ValueError:  # e.g. BatchNorm1d cannot train on a batch of one
            memory = calibrate(model, input_shape, num_classes, batches=(2, 4), profile=profile, local_ns=ns,
                               paths_of_batch=batch)
    size = profile.itemsize
    slots = 2 + OPTIMIZER_SLOTS[optimizer]  # the weight, its gradient, optimizer state
    input_bytes = T * batch * math.prod(input_shape) * size
    largest = max(max(u.in_features, u.out_features, u.states) for u in profile.units)
    workspace = 2.0 * batch * largest * size  # gradient of the largest activation, and one temporary
    rows = []
    for rank, s in enumerate(chosen):
        params = profile.params + (_head_params(profile, int(s.n)) if s.method == "local" else 0)
        fixed = params * size * slots + input_bytes
        row = PlanRow(s, memory.saved_bytes(s, T, batch), float(fixed), workspace, rank)
        row.fits = row.total <= budget
        rows.append(row)
    return rows, memory

