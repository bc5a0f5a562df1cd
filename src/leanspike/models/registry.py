"""Every model by name: ``build_model("vgg11", in_channels=2, num_classes=10, input_size=48)``.

``MODELS`` maps a name to a *factory* (a function building a fresh model), never to an
instance. Every factory takes ``in_channels``, ``num_classes``, ``input_size`` and
``neuron`` (a zero-argument neuron factory, ``None`` for the model's default) plus its
own keyword options (``dropout``, ``leak``, ...), and returns an ``nn.Sequential`` of
per-time-step modules.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .alexnet import alexnet
from .common import NeuronFactory, as_size, default_neuron
from .lenet import LENET_MIN_SIZE, lenet1, lenet2
from .nf_resnet import nf_resnet34, nf_resnet50, nf_resnet101
from .resnet import resnet18
from .small import spiking_cnn as _spiking_cnn
from .small import spiking_mlp as _spiking_mlp
from .vgg import vgg11, vgg11_ws

ModelFactory = Callable[..., nn.Sequential]


def spiking_mlp(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
                neuron: NeuronFactory | None = None, hidden: tuple[int, ...] = (128,), bias: bool = True) -> nn.Sequential:
    """:func:`leanspike.models.small.spiking_mlp` on flattened ``in_channels·H·W`` inputs."""
    h, w = as_size(input_size)
    return _spiking_mlp(in_channels * h * w, num_classes, hidden=hidden, neuron=default_neuron(neuron), bias=bias)


def spiking_cnn(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
                neuron: NeuronFactory | None = None, widths: tuple[int, ...] = (16, 32),
                batch_norm: bool = True) -> nn.Sequential:
    """:func:`leanspike.models.small.spiking_cnn` unchanged."""
    return _spiking_cnn(in_channels, num_classes, input_size, widths=widths, neuron=default_neuron(neuron),
                        batch_norm=batch_norm)


MODELS: dict[str, ModelFactory] = {
    "spiking_mlp": spiking_mlp,
    "spiking_cnn": spiking_cnn,
    "vgg11": vgg11,
    "vgg11_ws": vgg11_ws,
    "resnet18": resnet18,
    "nf_resnet34": nf_resnet34,
    "nf_resnet50": nf_resnet50,
    "nf_resnet101": nf_resnet101,
    "lenet1": lenet1,
    "lenet2": lenet2,
    "alexnet": alexnet,
}


@dataclass(frozen=True)
class Reference:
    """The input a model was designed for (the papers' datasets); used to count parameters."""

    in_channels: int
    input_size: int
    num_classes: int
    dataset: str


REFERENCE: dict[str, Reference] = {
    "spiking_mlp": Reference(1, 28, 10, "Fashion-MNIST"),
    "spiking_cnn": Reference(1, 28, 10, "Fashion-MNIST"),
    "vgg11": Reference(2, 48, 10, "DVS-CIFAR10 at 48×48"),
    "vgg11_ws": Reference(2, 48, 10, "DVS-CIFAR10 at 48×48"),
    "resnet18": Reference(3, 32, 10, "CIFAR-10"),
    "nf_resnet34": Reference(3, 224, 1000, "ImageNet"),
    "nf_resnet50": Reference(3, 224, 1000, "ImageNet"),
    "nf_resnet101": Reference(3, 224, 1000, "ImageNet"),
    "lenet1": Reference(1, 28, 47, "EMNIST (balanced, 47 classes)"),
    "lenet2": Reference(2, 128, 11, "DvsGesture"),
    "alexnet": Reference(3, 32, 10, "CIFAR-10"),
}

#: smallest accepted input side (height and width); 1 = any size
MIN_INPUT_SIZE: dict[str, int] = {name: 1 for name in MODELS} | {"lenet1": LENET_MIN_SIZE, "lenet2": LENET_MIN_SIZE}


def _unknown(name: object) -> ValueError:
    return ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")


def _check_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: int | tuple[int, int],
                neuron: NeuronFactory | None = None, **kwargs) -> nn.Sequential:
    """Build a fresh model by name; ``kwargs`` are the model's own options."""
    factory = MODELS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise _unknown(name)
    _check_int("in_channels", in_channels)
    _check_int("num_classes", num_classes)
    h, w = as_size(input_size)
    if min(h, w) < MIN_INPUT_SIZE[name]:
        raise ValueError(f"model {name!r} needs inputs of at least {MIN_INPUT_SIZE[name]}×{MIN_INPUT_SIZE[name]}, "
                         f"got {h}×{w}")
    options = set(inspect.signature(factory).parameters) - {"in_channels", "num_classes", "input_size", "neuron"}
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(sorted(options)) or 'none'}")
    defaults = model_options(name)
    for key, value in kwargs.items():
        _check_option(name, key, value, defaults[key])
    return factory(in_channels=in_channels, num_classes=num_classes, input_size=(h, w), neuron=neuron, **kwargs)


def _check_option(model: str, key: str, value: object, default: object) -> None:
    """``value`` has the kind of the option's default: a non-empty list of positive integers
    for layer widths, a positive integer, a flag, or a finite number ≥ 0."""
    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    if isinstance(default, (tuple, list)):
        ok, expected = isinstance(value, (tuple, list)) and len(value) > 0 and all(map(positive, value)), \
            "a non-empty list of positive integers"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = positive(value), "a positive integer"
    elif isinstance(default, float) or default is None:
        ok, expected = number(value) or (default is None and value is None), "a finite number >= 0"
    else:
        return
    if not ok:
        raise ValueError(f"model {model!r} option {key} must be {expected}, got {value!r}")


def model_options(name: str) -> dict[str, object]:
    """A model's own keyword options with their defaults."""
    if name not in MODELS:
        raise _unknown(name)
    skip = {"in_channels", "num_classes", "input_size", "neuron"}
    return {p.name: p.default for p in inspect.signature(MODELS[name]).parameters.values() if p.name not in skip}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelDescription:
    name: str
    parameters: int  # for the reference input
    reference: Reference
    accepted: str  # accepted per-step input shapes

    def reference_shape(self) -> str:
        r = self.reference
        return f"{r.in_channels}×{r.input_size}×{r.input_size} → {r.num_classes}"


def accepted_shapes(name: str) -> str:
    """The per-step input shapes ``[B, C, H, W]`` a model accepts, in words."""
    low = MIN_INPUT_SIZE[name]
    return "[B, C, H, W], any H, W" if low <= 1 else f"[B, C, H, W], H, W ≥ {low}"


def describe_models() -> list[ModelDescription]:
    """Name, parameter count on the reference input and accepted shapes of every model.

    Models are built on the ``meta`` device: nothing is allocated or initialised.
    """
    out = []
    for name in MODELS:
        ref = REFERENCE[name]
        with torch.device("meta"):
            model = build_model(name, in_channels=ref.in_channels, num_classes=ref.num_classes,
                                input_size=ref.input_size)
        out.append(ModelDescription(name, count_parameters(model), ref, accepted_shapes(name)))
    return out
