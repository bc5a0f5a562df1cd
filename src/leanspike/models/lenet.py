"""Spiking LeNet-1/LeNet-2 of the truncated-local BPTT paper (Table 2).

Three 5×5 convs, two 2×2 average pools and one fully connected layer, each conv and FC
followed by an LIF and a per-sequence dropout; then a spiking output layer
(``Linear → LIF``): the network emits spikes, whose firing rate over an interval the
paper's MSE loss compares with a one-hot target. Widths: LeNet-1 6/16/120/128 (EMNIST),
LeNet-2 64/128/128/256 (DvsGesture).

Geometry: the first conv is padded by 2 (LeNet-5 on 32×32 = a padded 28×28), the others
are not, so a 28×28 input ends as a 1×1 map (28→28→14→10→5→1). A global (adaptive)
average pool before the flatten makes larger inputs fit the same FC layer; it is the
identity on 28×28. Inputs must be at least 28×28. Weights are Kaiming-normal (fan-in):
see :func:`~leanspike.models.common.init_kaiming_fan_in` for why not PyTorch's default.

Neurons default to the paper's LIF: ``u[t] = λ·u[t−1] − V_th·s[t−1] + I[t]``
(``reset="soft-unleaked"``) with a rectangle surrogate of width 0.5 and, per Table 1,
``λ`` = 0.9, ``V_th`` = 0.5 for LeNet-1 (EMNIST: λ 0.9, V_th 0.4–0.6) and ``λ`` = 0.3,
``V_th`` = 0.3 for LeNet-2 (DvsGesture: λ 0.3, V_th 0.2–0.5); presets pick within the ranges.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn

from ..layers import SequenceDropout
from ..neuron import LIF
from ..surrogate import Rectangle
from .common import NeuronFactory, as_size, init_kaiming_fan_in

#: smallest input side LeNet accepts (the last 5×5 conv needs a 5×5 map)
LENET_MIN_SIZE = 28


def paper_lif(leak: float, v_threshold: float) -> NeuronFactory:
    """The truncated-local paper's LIF (Eq. 1, rectangle surrogate of width a = 0.5)."""
    return partial(LIF, decay=leak, v_threshold=v_threshold, reset="soft-unleaked", surrogate=Rectangle(0.5))


def ttl_neuron(neuron: NeuronFactory | None, leak: float | None, v_threshold: float | None,
               defaults: tuple[float, float]) -> NeuronFactory:
    """``neuron`` if given, else :func:`paper_lif` with ``leak``/``v_threshold`` or the defaults."""
    if neuron is not None:
        if leak is not None or v_threshold is not None:
            raise ValueError("give either neuron or leak/v_threshold, not both")
        return neuron
    return paper_lif(defaults[0] if leak is None else leak, defaults[1] if v_threshold is None else v_threshold)


def _lenet(widths: Sequence[int], in_channels: int, num_classes: int, input_size: int | tuple[int, int],
           neuron: NeuronFactory, dropout: float) -> nn.Sequential:
    h, w = as_size(input_size)
    if min(h, w) < LENET_MIN_SIZE:
        raise ValueError(f"LeNet needs inputs of at least {LENET_MIN_SIZE}×{LENET_MIN_SIZE}, got {h}×{w}")
    c1, c2, c3, fc = widths
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, c1, 5, padding=2), neuron(), SequenceDropout(dropout), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 5), neuron(), SequenceDropout(dropout), nn.AvgPool2d(2),
        nn.Conv2d(c2, c3, 5), neuron(), SequenceDropout(dropout),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(c3, fc), neuron(), SequenceDropout(dropout),
        nn.Linear(fc, num_classes), neuron(),  # spiking output layer
    ]
    model = nn.Sequential(*layers)
    init_kaiming_fan_in(model)
    return model


def lenet1(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 28,
           neuron: NeuronFactory | None = None, dropout: float = 0.0,
           leak: float | None = None, v_threshold: float | None = None) -> nn.Sequential:
    """LeNet-1 (6/16/120 channels, 128 FC neurons); EMNIST defaults (dropout 0)."""
    return _lenet((6, 16, 120, 128), in_channels, num_classes, input_size,
                  ttl_neuron(neuron, leak, v_threshold, (0.9, 0.5)), dropout)


def lenet2(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 128,
           neuron: NeuronFactory | None = None, dropout: float = 0.1,
           leak: float | None = None, v_threshold: float | None = None) -> nn.Sequential:
    """LeNet-2 (64/128/128 channels, 256 FC neurons); DvsGesture defaults (dropout 0.1 of 0–0.2)."""
    return _lenet((64, 128, 128, 256), in_channels, num_classes, input_size,
                  ttl_neuron(neuron, leak, v_threshold, (0.3, 0.3)), dropout)
