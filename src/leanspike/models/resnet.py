"""Spiking pre-activation ResNet-18 for CIFAR-sized inputs (SLTT supplement H.3).

Pre-activation blocks: ``x → BN → LIF → conv3×3 → BN → LIF → dropout → conv3×3 (+ shortcut)``,
the shortcut (identity, or a 1×1 conv when the shape changes) taking the block's spikes.
Batch norm is per time step, pooling is average pooling. Stages of 64, 128, 256, 512
channels (strides 1, 2, 2, 2) follow a 3×3 stem conv; the head is
``BN → LIF → global average pool → Flatten → dropout → Linear``.

Each residual block is one top-level child of the ``nn.Sequential``, so local methods
treat it as one unit. The global pool is adaptive: on 32×32 inputs it is the 4×4
average pool of the original; other sizes (28×28 ... 224×224) end on other map sizes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..layers import SequenceDropout, StepBatchNorm2d
from .common import NeuronFactory, default_neuron, init_conv_fan_out


class PreActBlock(nn.Module):
    """Pre-activation basic block; one top-level unit of the model."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, neuron: NeuronFactory,
                 dropout: float) -> None:
        super().__init__()
        self.bn1 = StepBatchNorm2d(in_channels)
        self.lif1 = neuron()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn2 = StepBatchNorm2d(out_channels)
        self.lif2 = neuron()
        self.dropout = SequenceDropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = self.lif1(self.bn1(x))
        out = self.conv1(spikes)
        out = self.conv2(self.dropout(self.lif2(self.bn2(out))))
        return out + self.shortcut(spikes)


def preact_resnet(blocks: Sequence[int], in_channels: int, num_classes: int,
                  neuron: NeuronFactory | None = None, dropout: float = 0.0, width: int = 64) -> nn.Sequential:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    make_neuron = default_neuron(neuron)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False)]
    channels = width
    for stage, count in enumerate(blocks):
        out = width * 2 ** stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(PreActBlock(channels, out, stride, make_neuron, dropout))
            channels = out
    classifier = nn.Linear(channels, num_classes)
    layers += [StepBatchNorm2d(channels), make_neuron(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               SequenceDropout(dropout), classifier]
    model = nn.Sequential(*layers)
    init_conv_fan_out(model)
    nn.init.zeros_(classifier.bias)
    return model


def resnet18(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 32,
             neuron: NeuronFactory | None = None, dropout: float = 0.0, width: int = 64) -> nn.Sequential:
    """Pre-activation ResNet-18 (SLTT's CIFAR network); ``input_size`` only for uniformity.

    ``width`` is the first stage's channel count (64 in the paper; the stages double it).
    """
    return preact_resnet((2, 2, 2, 2), in_channels, num_classes, neuron, dropout, width)
