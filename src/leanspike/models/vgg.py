"""Spiking VGG-11 as used by SLTT on DVS-Gesture and DVS-CIFAR10 (supplement H.3).

Layout (standard VGG-11, every max pool replaced by a 2×2 average pool)::

    64 P 128 P 256 256 P 512 512 P 512 512 P  ->  AdaptiveAvgPool(7×7) -> Flatten -> Linear

``vgg11``: each conv is ``Conv3×3 → per-step BN → LIF → SequenceDropout``. The two
hidden fully connected layers of VGG are removed, so the classifier is one Linear on
the 512×7×7 map (the 7×7 adaptive pool of torchvision's VGG, kept by the SLTT code).
Dropout follows every LIF; the paper uses 0.3 on DVS-CIFAR10 (the default) and 0.4
on DVS-Gesture.

``vgg11_ws``: the same network without batch norm (supplement H.3 "VGG-11 (WS)"): each
conv is ``WSConv3×3 → LIF → Scale(2.74) → SequenceDropout``.

Any input size works: a 2×2 pool is applied only while the map is at least 2 pixels
on each side (on 28×28 the fifth pool is skipped: 28→14→7→3→1), and the final adaptive
pool maps whatever remains to 7×7 (for a 1×1 map it copies the value).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..layers import Scale, SequenceDropout, StepBatchNorm2d, WSConv2d
from .common import NeuronFactory, as_size, default_neuron, init_conv_fan_out

#: VGG-11 configuration: conv widths, "P" = 2×2 average pool
VGG11 = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")


def _vgg(config: Sequence[int | str], in_channels: int, num_classes: int, input_size: int | tuple[int, int],
         neuron: NeuronFactory | None, dropout: float, head_size: int, ws: bool, width: int) -> nn.Sequential:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    make_neuron = default_neuron(neuron)
    h, w = as_size(input_size)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "P":
            if min(h, w) >= 2:
                layers.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            continue
        out = max(1, int(item) * width // 64)
        if ws:
            layers += [WSConv2d(channels, out, 3, padding=1), make_neuron(), Scale()]
        else:
            layers += [nn.Conv2d(channels, out, 3, padding=1), StepBatchNorm2d(out), make_neuron()]
        layers.append(SequenceDropout(dropout))
        channels = out
    classifier = nn.Linear(channels * head_size * head_size, num_classes)
    layers += [nn.AdaptiveAvgPool2d(head_size), nn.Flatten(), classifier]
    model = nn.Sequential(*layers)
    init_conv_fan_out(model)
    if not classifier.weight.is_meta:
        nn.init.normal_(classifier.weight, 0.0, 0.01)
        nn.init.zeros_(classifier.bias)
    return model


def vgg11(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
          neuron: NeuronFactory | None = None, dropout: float = 0.3, head_size: int = 7,
          width: int = 64) -> nn.Sequential:
    """VGG-11 with per-step batch norm (SLTT's DVS network); ``width`` scales all convs (64 = paper)."""
    return _vgg(VGG11, in_channels, num_classes, input_size, neuron, dropout, head_size, ws=False, width=width)


def vgg11_ws(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
             neuron: NeuronFactory | None = None, dropout: float = 0.3, head_size: int = 7,
             width: int = 64) -> nn.Sequential:
    """VGG-11 with scaled weight-standardised convs and no batch norm; ``width`` as in :func:`vgg11`."""
    return _vgg(VGG11, in_channels, num_classes, input_size, neuron, dropout, head_size, ws=True, width=width)
