"""A small spiking 1-D convolutional network for sequences of 1-D inputs.

Each time step is a 1-D signal ``[B, C, L]`` (e.g. one image row of sequential
Fashion-MNIST, ``layout="channels"``). The convolutions are ``Conv2d`` with ``(1, k)``
kernels over a ``[B, C, 1, L]`` view rather than ``Conv1d``: the layers then behave
like every other conv layer of leanspike (OTTT traces ``Conv2d``, per-step batch norm is
``BatchNorm2d``), with the same arithmetic as a 1-D convolution.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .common import NeuronFactory, as_size, default_neuron


def spiking_conv1d(in_channels: int, num_classes: int, input_size: int | tuple[int, int],
                   neuron: NeuronFactory | None = None, widths: Sequence[int] = (16, 32), kernel: int = 5,
                   batch_norm: bool = True) -> nn.Sequential:
    """[Conv(1×k) → BN (per step) → LIF → AvgPool(1×2)]× → Flatten → Linear.

    ``input_size`` is ``(1, L)`` (or ``L``'s side, whose last entry is used): the signal
    length. A stage pools only while the signal is at least 4 long.
    """
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer >= 1, got {kernel!r}")
    length = as_size(input_size)[1]
    make = default_neuron(neuron)
    layers: list[nn.Module] = [nn.Unflatten(2, (1, length))]  # [B, C, L] -> [B, C, 1, L]
    channels = in_channels
    for width in widths:
        layers.append(nn.Conv2d(channels, width, (1, kernel), padding=(0, kernel // 2), bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(make())
        if length >= 4:
            layers.append(nn.AvgPool2d((1, 2)))
            length //= 2
        channels = width
    layers += [nn.Flatten(), nn.Linear(channels * length, num_classes)]
    return nn.Sequential(*layers)
