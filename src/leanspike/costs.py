"""Analytic training costs of a leanspike model, after the truncated-local paper (Sec. IV).

A shape probe (one time step, batch 1) turns any leanspike model into a list of
*units* (its spiking units, :func:`leanspike.blocks.unit_groups`) with, per sample:
trainable parameters |W|, neural states |U| (LIF elements), dense synaptic operations M
(MACs of its Conv2d/Linear layers) and the elements its autograd graph keeps per step.
From that profile and a setting (T, k, n, classifier, batch) :func:`analyze` counts, per
unit and in total, the paper's memory reads/writes (Eqs. 11–13, with the cheaper backward
step at the end of each interval), additions (Eqs. 14–15), backward MACs (Eq. 16), the
memory footprint (Eqs. 8–10, and what leanspike's engine actually keeps) and the figure
of merit (Eq. 17). :func:`scalar_multiplications` gives the SLTT supplement's (C.2)
count of BPTT versus SLTT / SLTT-K. docs/costs.md holds the equations as reconstructed.

Blocks follow :class:`~leanspike.methods.TruncatedLocalBPTT`: the layers (spiking units)
are cut into blocks of n; every block but the last has a local classifier
(Linear(features → classes) → LIF) and the last block's classifier is the network's
spiking output layer (``Linear → LIF``, as in the paper's LeNet and AlexNet), which the
profile keeps apart from the layers. A model whose readout is a plain Linear (no output
neuron) has that Linear inside its last layer and no classifier in its last block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch
from torch import nn

from .blocks import unit_groups
from .layers import SequenceDropout
from .neuron import LIF
from .state import reset_states

CLASSIFIERS = ("trainable", "random")
GRADIENT_ADDS = ("paper", "exact")
MEMORY_MODELS = ("engine", "paper")

#: modules whose autograd backward keeps their input (the analytic graph count)
_SAVES_INPUT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm,
                nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# --------------------------------------------------------------------------------------
# The profile: what the model is made of, per sample and per time step
# --------------------------------------------------------------------------------------
@dataclass
class WeightedLayer:
    """One Conv2d/Linear inside a unit; ``density`` is α, the fraction of non-zero inputs."""

    name: str
    kind: str
    macs: int  # dense multiply-accumulates per sample and step (the paper's M / batch)
    input_facing: bool  # reads the unit's input (its errors would cross into the unit below)
    density: float = 1.0


@dataclass
class UnitProfile:
    """One spiking unit (a layer of the paper) for one sample and one time step."""

    index: int
    name: str
    params: int  # trainable parameters |W|
    states: int  # LIF elements (neural states) |U| per sample
    layers: list[WeightedLayer]
    in_features: int  # per-sample input elements
    out_features: int  # per-sample output elements (what a local classifier reads)
    graph: int  # elements autograd keeps per sample and step (analytic)
    sequence: int = 0  # elements kept once per sequence (dropout masks shared by all steps)
    out_density: float = 1.0

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def sparse_macs(self) -> float:
        """Additions of the forward pass, Σ α·M over the unit's layers (per sample)."""
        return sum(layer.density * layer.macs for layer in self.layers)

    @property
    def in_density(self) -> float:
        """MAC-weighted input density of the unit (α^{n−1} of Eqs. 14–15)."""
        total = self.macs
        return self.sparse_macs / total if total else 1.0

    def error_macs(self, first_in_block: bool) -> int:
        """MACs that carry errors through this unit in a backward step (Eq. 16)."""
        return sum(l.macs for l in self.layers if not (l.input_facing and first_in_block))


@dataclass
class ModelProfile:
    units: list[UnitProfile]  # the layers, as many as the model's spiking depth
    output: UnitProfile | None  # the spiking output layer (the last block's classifier)
    num_classes: int
    input_shape: tuple[int, ...]
    itemsize: int

    @property
    def depth(self) -> int:
        return len(self.units)

    @property
    def all_units(self) -> list[UnitProfile]:
        return self.units + ([self.output] if self.output is not None else [])

    @property
    def params(self) -> int:
        return sum(u.params for u in self.all_units)

    @property
    def states(self) -> int:
        return sum(u.states for u in self.all_units)

    @property
    def graph(self) -> int:
        return sum(u.graph for u in self.all_units)

    @property
    def sequence(self) -> int:
        return sum(u.sequence for u in self.all_units)


def _unit_name(group: Sequence[nn.Module]) -> str:
    return "+".join(type(m).__name__ for m in group)


def _weighted(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _split_output(group: list[nn.Module]) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split the last unit into (layer, spiking output layer) when it ends in one.

    :func:`~leanspike.blocks.unit_groups` merges a trailing ``Linear → LIF`` into the last
    unit; here it is taken apart again, because the paper counts it as a classifier.
    """
    spiking = [i for i, m in enumerate(group) if any(isinstance(x, LIF) for x in m.modules())]
    if len(spiking) < 2:
        return group, []
    start = next((i for i in range(spiking[-2] + 1, spiking[-1]) if _weighted(group[i])), None)
    if start is None:
        return group, []
    tail = group[start:]
    weighted = [m for m in tail if _weighted(m)]
    if isinstance(group[spiking[-1]], LIF) and weighted and all(isinstance(m, nn.Linear) for m in weighted) \
            and not any(_weighted(m) for m in group[spiking[-1]:]):
        return group[:start], tail
    return group, []


def _conv_macs(module: nn.Module, out: torch.Tensor) -> int:
    kernel = math.prod(module.weight.shape[2:])  # type: ignore[union-attr]
    per_out = (module.in_channels // module.groups) * kernel  # type: ignore[union-attr]
    return int(out[0].numel() * per_out)


@torch.no_grad()
def profile_model(model: nn.Module, input_shape: Sequence[int], num_classes: int | None = None) -> ModelProfile:
    """Probe one step of a batch of 1 (eval mode, state reset after) and count per unit.

    ``input_shape`` is one sample's step shape, e.g. ``(1, 28, 28)``.
    """
    groups = unit_groups(model)
    layer_part, output_part = _split_output(groups[-1])
    groups = groups[:-1] + [layer_part] + ([output_part] if output_part else [])
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    if device.type == "meta":
        raise ValueError("profile_model needs a model with real parameters, not on the meta device")
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    units: list[UnitProfile] = []
    names = {m: n for n, m in model.named_modules()}
    seen: set[int] = {x.untyped_storage().data_ptr()}  # the network input is not graph memory
    alive: list[torch.Tensor] = [x]  # keeps probed tensors alive so that addresses stay unique
    try:
        reset_states(model)
        for index, group in enumerate(groups):
            unit_in = x.untyped_storage().data_ptr()
            layers: list[WeightedLayer] = []
            counts = {"states": 0, "graph": 0, "sequence": 0}

            def hook(module, inputs, out, _layers=layers, _counts=counts, _unit_in=unit_in):
                inp = inputs[0] if inputs else None
                if isinstance(module, SequenceDropout) and module.p > 0 and isinstance(inp, torch.Tensor):
                    _counts["sequence"] += math.prod(module.mask_shape(inp)[1:])
                if isinstance(module, LIF):
                    _counts["states"] += out[0].numel()
                    _counts["graph"] += out[0].numel()  # the surrogate keeps u − V_th
                alive.extend(t for t in (inp, out) if isinstance(t, torch.Tensor))
                if isinstance(module, _SAVES_INPUT) and isinstance(inp, torch.Tensor):
                    key = inp.untyped_storage().data_ptr()
                    if key not in seen:
                        seen.add(key)
                        _counts["graph"] += inp[0].numel()
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    macs = _conv_macs(module, out)
                    kind = "conv"
                elif isinstance(module, nn.Linear):
                    macs = int(out[0].numel() * module.in_features)
                    kind = "linear"
                else:
                    return
                facing = isinstance(inp, torch.Tensor) and inp.untyped_storage().data_ptr() == _unit_in
                _layers.append(WeightedLayer(names.get(module, type(module).__name__), kind, macs, facing))

            handles = [m.register_forward_hook(hook) for child in group for m in child.modules()]
            try:
                in_features = x[0].numel()
                for child in group:
                    x = child(x)
            finally:
                for h in handles:
                    h.remove()
            params = sum(p.numel() for child in group for p in child.parameters() if p.requires_grad)
            units.append(UnitProfile(index, _unit_name(group), params, counts["states"], layers,
                                     in_features, x[0].numel(), counts["graph"], counts["sequence"]))
    finally:
        for m, mode in modes.items():
            m.training = mode
        reset_states(model)
    classes = num_classes if num_classes is not None else int(x[0].numel())
    output = units.pop() if output_part else None
    return ModelProfile(units, output, classes, tuple(input_shape), torch.empty((), dtype=dtype).element_size())


# --------------------------------------------------------------------------------------
# Densities α: measured from the model's spikes on real data, or given
# --------------------------------------------------------------------------------------
@dataclass
class Densities:
    """Fraction of non-zero inputs per weighted layer (by name) and per unit output."""

    layers: dict[str, float]
    unit_outputs: list[float]


@torch.no_grad()
def measure_densities(model: nn.Module, inputs: torch.Tensor) -> Densities:
    """Run ``inputs`` ``[T, B, ...]`` through the model (train mode, no graph) and average,
    over steps and samples, the fraction of non-zero elements entering every Conv2d/Linear
    and leaving every unit. Buffers (BN statistics), RNG and state are restored after."""
    groups = unit_groups(model)
    names = {m: n for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    sums: dict[str, float] = {}
    unit_sums = [0.0] * len(groups)

    def hook(module, inputs_, out):
        inp = inputs_[0]
        sums[names[module]] = sums.get(names[module], 0.0) + float((inp != 0).float().mean())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear,
                                                                                         nn.Conv1d, nn.Conv3d))]
    steps = inputs.shape[0]
    try:
        with torch.random.fork_rng(devices=[]):
            reset_states(model)
            for t in range(steps):
                x = inputs[t]
                for i, group in enumerate(groups):
                    for child in group:
                        x = child(x)
                    unit_sums[i] += float((x != 0).float().mean())
    finally:
        for h in handles:
            h.remove()
        reset_states(model)
        current = dict(model.named_buffers())
        for n, b in buffers.items():
            current[n].copy_(b)
    return Densities({n: s / steps for n, s in sums.items()}, [s / steps for s in unit_sums])


def with_densities(profile: ModelProfile, densities: Densities | None = None, spike_density: float = 1.0,
                   input_density: float = 1.0) -> ModelProfile:
    """A copy of ``profile`` with α filled in: measured (``densities``) or given (the same
    ``spike_density`` for every spike input, ``input_density`` for the network input)."""
    for name, value in (("spike_density", spike_density), ("input_density", input_density)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")

    def fill(u: UnitProfile) -> UnitProfile:
        layers = []
        for layer in u.layers:
            if densities is not None:
                alpha = densities.layers.get(layer.name, 1.0)
            else:
                alpha = input_density if (u.index == 0 and layer.input_facing) else spike_density
            layers.append(replace(layer, density=alpha))
        if densities is None:
            out = spike_density
        else:
            out = densities.unit_outputs[u.index] if u.index < len(densities.unit_outputs) else 1.0
        return replace(u, layers=layers, out_density=out)

    return replace(profile, units=[fill(u) for u in profile.units],
                   output=fill(profile.output) if profile.output is not None else None)


# --------------------------------------------------------------------------------------
# Blocks and classifiers
# --------------------------------------------------------------------------------------
@dataclass
class Classifier:
    """A block's classifier: a local head, or the network's spiking output layer."""

    features: int  # inputs per sample
    classes: int  # its neural states per sample (N_c)
    params: int
    macs: int  # per sample (|W_c||U_c|/N_c / batch)
    density: float  # α_c
    trainable: bool
    output: bool = False  # the network's own output layer


@dataclass
class Block:
    units: list[int]
    classifier: Classifier | None


def plan_blocks(profile: ModelProfile, n: int, classifier: str = "trainable") -> list[Block]:
    """Cut the profile's layers into blocks of ``n`` and attach the classifiers."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    units = profile.units
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(units):
        raise ValueError(f"n must be an integer in [1, {len(units)}] (the model's spiking depth), got {n!r}")
    c = profile.num_classes
    blocks = []
    for start in range(0, len(units), n):
        members = [u.index for u in units[start:start + n]]
        top = units[members[-1]]
        head: Classifier | None
        if start + n < len(units):
            head = Classifier(top.out_features, c, top.out_features * c + c, top.out_features * c,
                              top.out_density, classifier == "trainable")
        elif profile.output is not None:
            out = profile.output
            head = Classifier(out.in_features, out.states, out.params, out.macs, out.in_density, True, True)
        else:
            head = None
        blocks.append(Block(members, head))
    return blocks


# --------------------------------------------------------------------------------------
# Eqs. (11)–(16): per-step terms of one row (a unit or a classifier) of one block
# --------------------------------------------------------------------------------------
@dataclass
class StepTerms:
    """One row's terms per time step, for the whole batch."""

    reads_fwd: float = 0.0  # Eq. 11, N_R^F
    writes_fwd: float = 0.0  # Eq. 11, N_W^F
    reads_bwd_mid: float = 0.0  # Eq. 12, N_R^B inside an interval
    reads_bwd_end: float = 0.0  # the reduced reads at the interval's last step
    writes_bwd: float = 0.0  # Eq. 13, N_W^B
    adds_fwd: float = 0.0  # Eq. 14
    adds_bwd_mid: float = 0.0  # Eq. 15
    adds_bwd_end: float = 0.0  # Eq. 15 without its temporal additions
    macs_bwd: float = 0.0  # Eq. 16


def _unit_terms(profile: ModelProfile, block: Block, pos: int, batch: int, gradient_adds: str) -> StepTerms:
    u = profile.units[block.units[pos]]
    W, U = float(u.params), float(batch * u.states)
    top = pos == len(block.units) - 1
    W_up = 0.0 if top else float(profile.units[block.units[pos + 1]].params)
    grad = batch * u.in_density * W if gradient_adds == "paper" else batch * u.sparse_macs
    return StepTerms(
        reads_fwd=W + U, writes_fwd=U,
        reads_bwd_mid=W + 2 * U + W_up, reads_bwd_end=0.0 if top else W_up + U,
        writes_bwd=W + U,
        adds_fwd=batch * u.sparse_macs,
        adds_bwd_mid=2 * U + grad, adds_bwd_end=grad,
        macs_bwd=batch * u.error_macs(first_in_block=pos == 0))


def _classifier_terms(c: Classifier, batch: int) -> StepTerms:
    # random weights are drawn on the fly: no memory traffic and no gradient on them
    W = float(c.params) if c.trainable else 0.0
    U = float(batch * c.classes)
    grad = batch * c.density * W
    return StepTerms(
        reads_fwd=W + U, writes_fwd=U,
        reads_bwd_mid=2 * W + 3 * U, reads_bwd_end=W,
        writes_bwd=W + U,
        adds_fwd=batch * c.density * c.macs,
        adds_bwd_mid=2 * U + grad, adds_bwd_end=grad,
        macs_bwd=float(batch * c.macs))


# --------------------------------------------------------------------------------------
# One setting, per iteration
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostSetting:
    T: int
    k: int
    n: int
    classifier: str = "trainable"
    batch: int = 128

    def __post_init__(self) -> None:
        for name in ("T", "k", "n", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.k > self.T:
            raise ValueError(f"k = {self.k} exceeds T = {self.T}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")


@dataclass
class CostRow:
    """One unit or classifier, totals per training iteration (one batch of T steps)."""

    name: str
    block: int
    params: int  # trainable parameters N(w)
    states: int  # neural states of the batch, |U|
    macs_fwd_dense: float  # M per batch and step
    density: float
    reads: float = 0.0
    writes: float = 0.0
    additions: float = 0.0
    macs: float = 0.0

    @property
    def memory_access(self) -> float:
        return self.reads + self.writes


@dataclass
class CostReport:
    setting: CostSetting
    rows: list[CostRow]
    memory: dict[str, float]  # bytes: weights, grads, graph_step, engine, paper
    blocks: list[list[int]] = field(default_factory=list)

    def total(self, attr: str) -> float:
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def totals(self) -> dict[str, float]:
        keys = ("params", "states", "reads", "writes", "memory_access", "additions", "macs")
        return {k: self.total(k) for k in keys}

    def as_dict(self) -> dict:
        s = self.setting
        return {"T": s.T, "k": s.k, "n": s.n, "classifier": s.classifier, "batch": s.batch,
                "blocks": self.blocks, "totals": self.totals,
                "memory_bytes": self.memory,
                "rows": [{"name": r.name, "block": r.block, "params": r.params, "states": r.states,
                          "macs_fwd_dense": r.macs_fwd_dense, "density": r.density, "reads": r.reads,
                          "writes": r.writes, "additions": r.additions, "macs": r.macs} for r in self.rows]}


def _interval_lengths(T: int, k: int) -> list[int]:
    return [min(k, T - t0) for t0 in range(0, T, k)]


def _accumulate(row: CostRow, terms: StepTerms, lengths: Iterable[int]) -> None:
    for kk in lengths:
        row.reads += kk * terms.reads_fwd + (kk - 1) * terms.reads_bwd_mid + terms.reads_bwd_end
        row.writes += kk * (terms.writes_fwd + terms.writes_bwd)
        row.additions += kk * terms.adds_fwd + (kk - 1) * terms.adds_bwd_mid + terms.adds_bwd_end
        row.macs += kk * terms.macs_bwd


def memory_footprint(profile: ModelProfile, setting: CostSetting, blocks: list[Block],
                     graph_scale: float = 1.0) -> dict[str, float]:
    """Eqs. (8)–(10) in bytes. ``graph_step`` is MC(CG) of one step (whole network,
    batch), estimated as the elements autograd keeps (states + intermediates) times the
    item size times ``graph_scale`` (1 = analytic; a calibration rescales it to measured
    bytes). ``graph_sequence`` (per-sequence dropout masks) is added once.

    ``paper``: Eq. (9) for one block, Eq. (10) for local blocks:
    (k−1)·MC(CG) + MC_local(CG) + N(w) + N(grads), with MC_local the largest block's step.
    ``engine``: what leanspike's engine keeps: one block at a time runs the whole interval
    and goes back through it before the next block starts, so k·(the largest block's step
    with its classifier) + N(w) + N(grads).
    """
    size = profile.itemsize
    b = setting.batch
    k = min(setting.k, setting.T)
    weights = float(profile.params + sum(bl.classifier.params for bl in blocks
                                         if bl.classifier is not None and bl.classifier.trainable
                                         and not bl.classifier.output))
    block_graph = []
    for bl in blocks:
        g = sum(profile.units[i].graph for i in bl.units) * graph_scale
        if bl.classifier is not None:
            if bl.classifier.output:
                g += profile.output.graph * graph_scale  # type: ignore[union-attr]
            else:
                g += bl.classifier.classes  # the head's LIF keeps one tensor
        block_graph.append(b * g * size)
    step = sum(block_graph)
    sequence = b * profile.sequence * size  # dropout masks: once per sequence, whatever k
    fixed = 2 * weights * size  # N(w) + N(grads): one gradient buffer, not one per step
    paper = (k * step if len(blocks) == 1 else (k - 1) * step + max(block_graph)) + fixed
    return {"weights": weights * size, "grads": weights * size, "graph_step": step,
            "graph_sequence": sequence, "engine": k * max(block_graph) + sequence + fixed, "paper": paper + sequence}


def analyze(profile: ModelProfile, setting: CostSetting, gradient_adds: str = "paper",
            graph_scale: float = 1.0) -> CostReport:
    """Per-unit and per-classifier costs of one training iteration under ``setting``."""
    if gradient_adds not in GRADIENT_ADDS:
        raise ValueError(f"gradient_adds must be one of {GRADIENT_ADDS}, got {gradient_adds!r}")
    blocks = plan_blocks(profile, setting.n, setting.classifier)
    lengths = _interval_lengths(setting.T, setting.k)
    b = setting.batch
    rows: list[CostRow] = []
    for bi, block in enumerate(blocks):
        for pos, index in enumerate(block.units):
            u = profile.units[index]
            row = CostRow(f"{index}:{u.name}", bi, u.params, b * u.states, float(b * u.macs), u.in_density)
            _accumulate(row, _unit_terms(profile, block, pos, b, gradient_adds), lengths)
            rows.append(row)
        c = block.classifier
        if c is not None:
            name = "output" if c.output else f"head{bi}"
            row = CostRow(name, bi, c.params if c.trainable else 0, b * c.classes, float(b * c.macs), c.density)
            _accumulate(row, _classifier_terms(c, b), lengths)
            rows.append(row)
    memory = memory_footprint(profile, setting, blocks, graph_scale)
    return CostReport(setting, rows, memory, [bl.units for bl in blocks])


# --------------------------------------------------------------------------------------
# Eq. (17): figure of merit against BPTT
# --------------------------------------------------------------------------------------
def figure_of_merit(report: CostReport, baseline: CostReport, accuracy: float | None = None,
                    baseline_accuracy: float | None = None, memory_model: str = "engine") -> dict[str, float]:
    """FoM = AL + 0.25·(MC + #MA + #ADD + #MAC), every term normalised by BPTT's.

    AL is the relative accuracy loss (acc_BPTT − acc)/acc_BPTT, 0 when not given.
    """
    if memory_model not in MEMORY_MODELS:
        raise ValueError(f"memory_model must be one of {MEMORY_MODELS}, got {memory_model!r}")
    t, t0 = report.totals, baseline.totals
    mc = report.memory[memory_model] / baseline.memory[memory_model]
    ma = t["memory_access"] / t0["memory_access"]
    add = t["additions"] / t0["additions"]
    mac = t["macs"] / t0["macs"] if t0["macs"] else 1.0
    al = 0.0
    if accuracy is not None and baseline_accuracy:
        al = (baseline_accuracy - accuracy) / baseline_accuracy
    return {"AL": al, "MC": mc, "MA": ma, "ADD": add, "MAC": mac, "FoM": al + 0.25 * (mc + ma + add + mac)}


# --------------------------------------------------------------------------------------
# SLTT supplement C.2: scalar multiplications of BPTT versus SLTT / SLTT-K
# --------------------------------------------------------------------------------------
def scalar_multiplications(profile: ModelProfile, T: int, batch: int = 1, K: int | None = None) -> dict:
    """Backward scalar multiplications of one iteration (Algorithms S2 and S3).

    Per unit l with d_l states, P_l MACs to carry errors to its input (none for the
    first unit) and G_l dense MACs for its weight gradient, per sample and step:

    - BPTT, step T: P_{l+1} + d_l (spatial e_s, then e_u) + G_l;
      steps t < T: P_{l+1} + d_l (e_s: spatial + temporal) + 2·d_l (e_u) + G_l.
    - SLTT, every backward step: P_{l+1} + d_l (e_u, spatial only) + G_l.
    - SLTT-K: SLTT's per-step count at K of the T steps.

    So SLTT saves 2·d_l per layer at each of the T − 1 earlier steps: the supplement's
    "2d for one intermediate time step and one intermediate layer".
    """
    if K is not None and not 1 <= K <= T:
        raise ValueError(f"K must be in [1, T = {T}], got {K}")
    units = profile.all_units  # the spiking output layer is layer L here
    per_layer = []
    for i, u in enumerate(units):
        above = units[i + 1].error_macs(first_in_block=False) - units[i + 1].error_macs(first_in_block=True) \
            if i + 1 < len(units) else 0
        inner = u.error_macs(first_in_block=True)  # errors inside the unit itself
        d = u.states
        spatial = above + inner + d + u.macs
        bptt = spatial + (T - 1) * (spatial + 2 * d)
        sltt = T * spatial
        name = "output" if u is profile.output else f"{i}:{u.name}"
        per_layer.append({"name": name, "bptt": batch * bptt, "sltt": batch * sltt,
                          "sltt_k": batch * (K if K is not None else T) * spatial})
    total = {key: sum(row[key] for row in per_layer) for key in ("bptt", "sltt", "sltt_k")}
    return {"T": T, "K": K, "batch": batch, "total": total, "layers": per_layer}
