"""Small spiking networks: a fully connected SNN and a small convolutional SNN.

Every leanspike model is an ``nn.Sequential`` of per-time-step modules: calling it on
one step ``[B, ...]`` returns that step's output ``[B, classes]``. Its top-level
children are the units that local methods split into blocks.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..neuron import LIF

NeuronFactory = Callable[[], nn.Module]


def spiking_mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (128,),
                neuron: NeuronFactory = LIF, bias: bool = True) -> nn.Sequential:
    """Flatten → [Linear → LIF] × len(hidden) → Linear (the output is a current)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), neuron()]
        width = h
    layers.append(nn.Linear(width, num_classes, bias=bias))
    return nn.Sequential(*layers)


def spiking_cnn(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
                widths: Sequence[int] = (16, 32), neuron: NeuronFactory = LIF,
                batch_norm: bool = True) -> nn.Sequential:
    """[Conv3×3 → BN (per step) → LIF → AvgPool2]× → Flatten → Linear.

    A stage pools only while the feature map is at least 4 pixels wide, so the same
    builder serves 8×8 digits and 28×28 Fashion-MNIST.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    layers: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(neuron())
        if min(h, w) >= 4:
            layers.append(nn.AvgPool2d(2))
            h, w = h // 2, w // 2
        channels = width
    layers += [nn.Flatten(), nn.Linear(channels * h * w, num_classes)]
    return nn.Sequential(*layers)
