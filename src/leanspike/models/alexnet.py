"""Spiking 8-layer AlexNet of the truncated-local BPTT paper (Table 2).

Six 3×3 convs (96/2, 256, 384, 512, 384, 256 channels; "/2" = stride 2, the others
stride 1, all padded by 1) with a 2×2 average pool after the 2nd and 3rd, then two fully
connected layers (4096, 1024). Each conv and FC is followed by an LIF and a per-sequence
dropout; a spiking output layer (``Linear → LIF``) emits the class spikes whose rate the
paper's MSE loss uses.

On the reference CIFAR-10 input (32×32) the last conv map is 4×4 (32→16→8→4), so the
first FC sees 256·4·4 = 4096 features. An adaptive average pool to 4×4 before the flatten
keeps that for any input size (identity on 32×32; for 28×28 it spreads the 3×3 map over
4×4); a 2×2 pool is skipped on a map less than 2 pixels wide.

Neurons default to the paper's LIF (``reset="soft-unleaked"``, rectangle surrogate of
width 0.5) with Table 1's CIFAR-10 settings: ``λ`` = 0.8, ``V_th`` = 0.4 (range 0.3–0.5),
dropout 0.1 (range 0–0.15).
"""

from __future__ import annotations

from torch import nn

from ..layers import SequenceDropout
from .common import NeuronFactory, as_size, conv_out, init_kaiming_fan_in
from .lenet import ttl_neuron

#: (out channels, stride) of each conv; "P" = 2×2 average pool
ALEXNET_FEATURES = ((96, 2), (256, 1), "P", (384, 1), "P", (512, 1), (384, 1), (256, 1))
ALEXNET_FC = (4096, 1024)
HEAD_SIZE = 4


def alexnet(in_channels: int, num_classes: int, input_size: int | tuple[int, int] = 32,
            neuron: NeuronFactory | None = None, dropout: float = 0.1,
            leak: float | None = None, v_threshold: float | None = None) -> nn.Sequential:
    make_neuron = ttl_neuron(neuron, leak, v_threshold, (0.8, 0.4))
    side = min(as_size(input_size))
    layers: list[nn.Module] = []
    channels = in_channels
    for item in ALEXNET_FEATURES:
        if item == "P":
            if side >= 2:
                layers.append(nn.AvgPool2d(2))
                side //= 2
            continue
        width, stride = item
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1), make_neuron(), SequenceDropout(dropout)]
        side = conv_out(side, 3, stride, 1)
        channels = width
    layers += [nn.AdaptiveAvgPool2d(HEAD_SIZE), nn.Flatten()]
    features = channels * HEAD_SIZE * HEAD_SIZE
    for width in ALEXNET_FC:
        layers += [nn.Linear(features, width), make_neuron(), SequenceDropout(dropout)]
        features = width
    layers += [nn.Linear(features, num_classes), make_neuron()]  # spiking output layer
    model = nn.Sequential(*layers)
    init_kaiming_fan_in(model)  # the paper gives none; PyTorch's default leaves deep layers silent
    return model
