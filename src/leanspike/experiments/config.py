"""The experiment configuration: one typed schema shared by presets, flags and sweeps.

A config is a tree of small dataclasses. It is read from plain dicts (YAML presets,
``--set a.b=value`` overrides), and every value is checked against the field's type on
the way in, so a wrong type fails at once with one line naming the field, the value
and the expected type, instead of deep inside training. Range checks that need no
data or model (k ≤ T, lr > 0, known names) live in :func:`validate`; checks that need
the built model (n ≤ spiking depth, input shape) happen when the run is built.

This module is a leaf: it imports no torch and no other leanspike module but
:mod:`leanspike.errors`, so listing or validating presets stays instant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from ..errors import UserError

METHODS = ("bptt", "tbptt", "sltt", "sltt-k", "ottt", "ttl")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("ce", "sltt", "mean-ce", "rate-mse")
SURROGATES = ("rectangle", "triangle", "sigmoid", "atan")
RESETS = ("soft", "hard", "soft-unleaked")
CLASSIFIERS = ("trainable", "random")
AMP_DTYPES = ("float16", "bfloat16")


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to data.build_dataset
    workers: int = 0
    test_batch_size: int = 256


@dataclass
class ModelConfig:
    name: str = "spiking_cnn"
    options: dict[str, Any] = field(default_factory=dict)  # the model factory's own keywords


@dataclass
class MethodConfig:
    name: str = "bptt"
    k: Optional[int] = None  # tbptt / ttl: interval length
    K: Optional[int] = None  # sltt-k: steps with backward per batch
    n: Optional[int] = None  # ttl: spiking layers per local block
    classifier: str = "trainable"  # ttl: local classifiers trainable or fixed random
    update: str = "batch"  # tbptt: batch | interval; ottt: batch | step
    scale: str = "T"  # sltt-k: each step's loss / T (paper) or / K
    steps_per_backward: int = 1  # sltt: steps back-propagated at once (same gradient; memory ∝ it)


@dataclass
class NeuronConfig:
    tau: Optional[float] = 2.0  # decay = 1 - 1/tau
    decay: Optional[float] = None  # the leak λ given directly; wins over tau
    v_threshold: float = 1.0
    reset: str = "soft"
    surrogate: str = "triangle"
    surrogate_width: Optional[float] = None  # γ; None = v_threshold
    detach_reset: bool = False


@dataclass
class LossConfig:
    name: str = "ce"
    lambda_mse: float = 0.05  # sltt loss: weight of the MSE term
    target: str = "constant"  # sltt loss: MSE towards V_th ("constant") or the one-hot label


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine annealing over the epochs, step decay, or constant
    step_size: int = 20  # step: epochs between decays
    gamma: float = 0.5  # step: factor per decay
    eta_min: float = 0.0  # cosine: final learning rate


@dataclass
class ExperimentConfig:
    name: Optional[str] = None
    description: str = ""
    source: str = ""  # where the numbers come from (paper, table, section)
    notes: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    T: int = 4
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    amp_dtype: str = "float16"
    compile_lif: bool = False  # CPU: LIF loops (and norm + LIF pairs) compiled by torch.compile; needs a C++ compiler
    max_batches: Optional[int] = None  # cap on training batches per epoch (smoke runs)
    eval_every: int = 1
    init_from: Optional[str] = None  # a checkpoint file or run folder to start from
    requires_init: bool = False  # fine-tuning presets: refuse to start from scratch
    tensorboard: bool = True  # when the tensorboard package is installed
    sweep: dict[str, list] = field(default_factory=dict)  # default grid of `leanspike sweep`


# ----------------------------------------------------------------------------- types
def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is dict or hint is dict:
        return "a mapping"
    if origin is list or hint is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(path: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against ``hint`` (ints widen to floats; numeric strings to floats,
    because YAML 1.1 reads ``5e-4`` as a string)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail() -> UserError:
        return UserError(f"{where}config field {path}: expected {_describe(hint)}, got {_short(value)} "
                         f"({type(value).__name__})")

    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg, where)
            except UserError:
                pass
        raise fail()
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise fail() from None
            if math.isfinite(number):
                return number
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin is dict or hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise fail()
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        return [_coerce(f"{path}[{i}]", v, args[0], where) if args else v for i, v in enumerate(value)]
    raise TypeError(f"unsupported config type {hint!r} for {path}")  # pragma: no cover - schema bug


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where}config section {prefix.rstrip('.') or '(top level)'}: expected a mapping, "
                        f"got {_short(data)} ({type(data).__name__})")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UserError(f"{where}unknown config field {prefix}{unknown[0]}; "
                        f"known fields{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(prefix + name, data[name], hint, where)
    return cls(**kwargs)


def from_dict(data: dict[str, Any], where: str = "") -> ExperimentConfig:
    """A config from a plain dict; missing fields take their defaults.

    ``where`` (e.g. ``"preset foo: "``) prefixes error messages.
    """
    return _build(ExperimentConfig, data, "", where)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def field_names(prefix: str = "", cls: type = ExperimentConfig) -> list[str]:
    """Every dotted field name, e.g. ``optimizer.lr`` (used by sweeps and error hints)."""
    out = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += field_names(f"{prefix}{f.name}.", hint)
        else:
            out.append(prefix + f.name)
    return out


# ------------------------------------------------------------------------- overrides
def parse_assignment(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.05"`` → ``("optimizer.lr", 0.05)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {text!r}: expected FIELD=VALUE, e.g. optimizer.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_path(data: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set dotted ``key`` in the plain dict ``data``; the key must name a schema field
    (or a key inside a free-form mapping field such as ``data.options``)."""
    parts = key.split(".")
    cls: Any = ExperimentConfig
    node = data
    for i, part in enumerate(parts):
        known = {f.name for f in dataclasses.fields(cls)} if cls is not None else None
        if known is not None and part not in known:
            prefix = ".".join(parts[:i])
            raise UserError(f"{where}unknown config field {key}; known fields"
                            f"{' of ' + prefix if prefix else ''}: {', '.join(sorted(known))}")
        last = i == len(parts) - 1
        if last:
            node[part] = value
            return
        hint = _hints(cls)[part] if cls is not None else None
        if cls is not None and not dataclasses.is_dataclass(hint) and typing.get_origin(hint) is not dict:
            raise UserError(f"{where}config field {'.'.join(parts[:i + 1])} is not a section; cannot set {key}")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UserError(f"{where}config field {'.'.join(parts[:i + 1])} is not a mapping; cannot set {key}")
        node = child
        cls = hint if dataclasses.is_dataclass(hint) else None


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any] | list[tuple[str, Any]],
                    where: str = "") -> ExperimentConfig:
    """A new config with dotted overrides applied and type-checked."""
    data = copy.deepcopy(to_dict(cfg))
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for key, value in items:
        set_path(data, key, value, where)
    return from_dict(data, where)


def get_path(cfg: ExperimentConfig, key: str) -> Any:
    node: Any = to_dict(cfg)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two config dicts differ (free-form mappings compared whole)."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = prefix + key
        if isinstance(va, dict) and isinstance(vb, dict) and key not in ("options", "sweep"):
            out += differences(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


# ------------------------------------------------------------------------ validation
def _choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {field_name} {value!r}; expected one of {', '.join(choices)}")


def _at_least(name: str, value: int | float | None, low: float, flag: str | None = None) -> None:
    if value is not None and value < low:
        shown = flag or name
        raise UserError(f"{shown} must be >= {low:g}, got {value}")


def validate(cfg: ExperimentConfig) -> None:
    """Checks that need neither data nor model; raises a one-line UserError."""
    m = cfg.method
    _choice("method", m.name, METHODS)
    for name, flag in (("T", "--T"), ("epochs", "--epochs"), ("batch_size", "--batch-size"),
                       ("eval_every", "eval_every")):
        _at_least(name, getattr(cfg, name), 1, flag)
    _at_least("max_batches", cfg.max_batches, 1, "--max-batches")
    _at_least("data.workers", cfg.data.workers, 0)
    _at_least("data.test_batch_size", cfg.data.test_batch_size, 1)
    if m.name in ("tbptt", "ttl"):
        if m.k is None:
            raise UserError(f"--method {m.name} needs --k (method.k: interval length, 1 <= k <= T = {cfg.T})")
        if not 1 <= m.k <= cfg.T:
            raise UserError(f"--k {m.k} is out of range: expected 1 <= k <= T = {cfg.T}")
    if m.name == "sltt-k":
        if m.K is None:
            raise UserError(f"--method sltt-k needs --K (method.K: steps with backward, 1 <= K <= T = {cfg.T})")
        if not 1 <= m.K <= cfg.T:
            raise UserError(f"--K {m.K} is out of range: expected 1 <= K <= T = {cfg.T}")
    if m.name == "ttl":
        if m.n is None:
            raise UserError("--method ttl needs --n (method.n: spiking layers per local block, >= 1)")
        if m.n < 1:
            raise UserError(f"--n {m.n} is out of range: expected n >= 1 (spiking layers per block)")
        _choice("method.classifier", m.classifier, CLASSIFIERS)
    if m.name == "tbptt":
        _choice("method.update for tbptt", m.update, ("batch", "interval"))
    if m.name == "ottt":
        _choice("method.update for ottt", m.update, ("batch", "step"))
    if m.name == "sltt-k":
        _choice("method.scale", m.scale, ("T", "K"))
    if m.name == "sltt":
        _at_least("method.steps_per_backward", m.steps_per_backward, 1)
    n = cfg.neuron
    if n.decay is None and n.tau is None:
        raise UserError("neuron: give neuron.tau (decay = 1 - 1/tau) or neuron.decay")
    if n.decay is not None and not 0.0 <= n.decay <= 1.0:
        raise UserError(f"neuron.decay must be in [0, 1], got {n.decay}")
    if n.decay is None and n.tau is not None and n.tau < 1:
        raise UserError(f"--tau must be >= 1 (decay = 1 - 1/tau), got {n.tau}")
    if not n.v_threshold > 0:
        raise UserError(f"neuron.v_threshold must be > 0, got {n.v_threshold}")
    _choice("neuron.reset", n.reset, RESETS)
    _choice("surrogate", n.surrogate, SURROGATES)
    if n.surrogate_width is not None and not n.surrogate_width > 0:
        raise UserError(f"neuron.surrogate_width must be > 0, got {n.surrogate_width}")
    _choice("loss", cfg.loss.name, LOSSES)
    if not 0.0 <= cfg.loss.lambda_mse <= 1.0:
        raise UserError(f"loss.lambda_mse must be in [0, 1], got {cfg.loss.lambda_mse}")
    _choice("loss.target", cfg.loss.target, ("constant", "onehot"))
    o = cfg.optimizer
    _choice("optimizer", o.name, OPTIMIZERS)
    if not 0 < o.lr < math.inf:
        raise UserError(f"--lr must be a finite number > 0, got {o.lr}")
    if not 0 <= o.weight_decay < math.inf:  # written so that NaN fails too
        raise UserError(f"--weight-decay must be a finite number >= 0, got {o.weight_decay}")
    if not 0.0 <= o.momentum < 1.0:
        raise UserError(f"--momentum must be in [0, 1), got {o.momentum}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise UserError(f"optimizer.betas must be two numbers in [0, 1), got {o.betas}")
    s = cfg.schedule
    _choice("schedule", s.name, SCHEDULES)
    _at_least("schedule.step_size", s.step_size, 1)
    if not 0.0 < s.gamma <= 1.0:
        raise UserError(f"schedule.gamma must be in (0, 1], got {s.gamma}")
    if not 0 <= s.eta_min < math.inf:
        raise UserError(f"schedule.eta_min must be a finite number >= 0, got {s.eta_min}")
    _choice("amp_dtype", cfg.amp_dtype, AMP_DTYPES)
    if not (cfg.device in ("auto", "cpu", "cuda") or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit())):
        raise UserError(f"--device {cfg.device!r}: expected auto, cpu, cuda or cuda:N")
    if cfg.requires_init and not cfg.init_from:
        raise UserError(f"preset {cfg.name or ''} fine-tunes a pre-trained model: give --init-from "
                        "(the pre-training run's folder or checkpoint)")
    for key, values in cfg.sweep.items():
        if key != "seed" and key not in field_names():
            raise UserError(f"sweep: unknown config field {key}")
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep: {key} must list at least one value, got {_short(values)}")


def effective(cfg: ExperimentConfig) -> dict[str, Any]:
    """The method's own knobs, None where the method has none (for summaries and reports)."""
    m = cfg.method
    return {"k": m.k if m.name in ("tbptt", "ttl") else None,
            "K": m.K if m.name == "sltt-k" else None,
            "n": m.n if m.name == "ttl" else None,
            "classifier": m.classifier if m.name == "ttl" else None}
