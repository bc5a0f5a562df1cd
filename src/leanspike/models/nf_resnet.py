"""Spiking normaliser-free ResNets (NF-ResNet-34/50/101; SLTT supplement H.2).

No batch norm: every conv is a scaled weight-standardised :class:`~leanspike.layers.WSConv2d`
and every LIF is followed by ``Scale(2.74)``, which gives spikes unit variance. A
residual block computes ``x + α·g·f(x/β)``:

- ``β = sqrt(Var[x])`` is the *expected* variance of the block input, tracked
  analytically: 1 after the stem; each block adds ``α²``; a transition block (stride
  or width change, whose shortcut is a WS 1×1 conv of the unit-variance scaled spikes)
  restarts it at ``1 + α²``. So ``f`` always sees a unit-variance input.
- ``α = 0.2`` sets how fast the variance grows from block to block.
- ``g`` is a scalar skip gain initialised at zero (SkipInit): every block starts as the
  identity.

Blocks: basic (two 3×3 convs, NF-ResNet-34) or bottleneck (1×1, 3×3 with the stride,
1×1 ×4, NF-ResNet-50/101). The stem is a 7×7/2 WS conv and a 3×3/2 average pool; the
head is a global (adaptive) average pool and a zero-initialised Linear. The global pool
is adaptive, so 28×28 to 224×224 inputs all work (224×224 is the reference).
``width`` is the stem/first stage's channel count (64 in the paper; stages double it).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..layers import Scale, WSConv2d
from .common import NeuronFactory, default_neuron, init_conv_fan_out

ALPHA = 0.2


class NFBasicBlock(nn.Module):
    """``x + α·g·conv(LIF(conv(LIF(x/β))))`` with scaled spikes; one top-level unit."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, beta: float, alpha: float,
                 neuron: NeuronFactory) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.beta, self.alpha = float(beta), float(alpha)
        self.lif1, self.scale1 = neuron(), Scale()
        self.downsample = (WSConv2d(in_channels, out_channels, 1, stride=stride)
                           if stride != 1 or in_channels != out_channels else None)
        self.branch = self._branch(in_channels, width, stride, neuron)
        self.skip_gain = nn.Parameter(torch.zeros(()))

    def _branch(self, in_channels: int, width: int, stride: int, neuron: NeuronFactory) -> nn.Sequential:
        return nn.Sequential(WSConv2d(in_channels, width, 3, stride=stride, padding=1), neuron(), Scale(),
                             WSConv2d(width, width, 3, padding=1))

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4g}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = self.scale1(self.lif1(x / self.beta))
        identity = x if self.downsample is None else self.downsample(spikes)
        return identity + self.branch(spikes) * (self.skip_gain * self.alpha)


class NFBottleneck(NFBasicBlock):
    """Bottleneck variant: 1×1 → 3×3 (stride) → 1×1 expanding ×4."""

    expansion = 4

    def _branch(self, in_channels: int, width: int, stride: int, neuron: NeuronFactory) -> nn.Sequential:
        return nn.Sequential(WSConv2d(in_channels, width, 1), neuron(), Scale(),
                             WSConv2d(width, width, 3, stride=stride, padding=1), neuron(), Scale(),
                             WSConv2d(width, width * self.expansion, 1))


def nf_resnet(block: type[NFBasicBlock], blocks: Sequence[int], in_channels: int, num_classes: int,
              neuron: NeuronFactory | None = None, alpha: float = ALPHA, width: int = 64) -> nn.Sequential:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    make_neuron = default_neuron(neuron)
    layers: list[nn.Module] = [WSConv2d(in_channels, width, 7, stride=2, padding=3),
                               nn.AvgPool2d(3, stride=2, padding=1)]
    channels, expected_var = width, 1.0
    for stage, count in enumerate(blocks):
        planes = width * 2 ** stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            unit = block(channels, planes, stride, math.sqrt(expected_var), alpha, make_neuron)
            layers.append(unit)
            expected_var = 1.0 + alpha ** 2 if unit.downsample is not None else expected_var + alpha ** 2
            channels = planes * block.expansion
    classifier = nn.Linear(channels, num_classes)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier]
    model = nn.Sequential(*layers)
    init_conv_fan_out(model)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    return model


def nf_resnet34(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 224,
                neuron: NeuronFactory | None = None, alpha: float = ALPHA, width: int = 64) -> nn.Sequential:
    return nf_resnet(NFBasicBlock, (3, 4, 6, 3), in_channels, num_classes, neuron, alpha, width)


def nf_resnet50(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 224,
                neuron: NeuronFactory | None = None, alpha: float = ALPHA, width: int = 64) -> nn.Sequential:
    return nf_resnet(NFBottleneck, (3, 4, 6, 3), in_channels, num_classes, neuron, alpha, width)


def nf_resnet101(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 224,
                 neuron: NeuronFactory | None = None, alpha: float = ALPHA, width: int = 64) -> nn.Sequential:
    return nf_resnet(NFBottleneck, (3, 4, 23, 3), in_channels, num_classes, neuron, alpha, width)
