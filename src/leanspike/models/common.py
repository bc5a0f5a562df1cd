"""Small helpers shared by the model builders."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..neuron import LIF

NeuronFactory = Callable[[], nn.Module]


def as_size(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``28`` or ``(28, 28)`` -> ``(28, 28)``; anything else is a ValueError."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        size = (input_size[0], input_size[1])
    else:
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"input_size must hold positive integers, got {input_size!r}")
    return size


def default_neuron(neuron: NeuronFactory | None) -> NeuronFactory:
    """The SLTT networks' default: ``LIF()`` (τ = 1.1, V_th = 1, triangle surrogate)."""
    return LIF if neuron is None else neuron


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def init_conv_fan_out(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU gain) conv weights and zero conv biases.

    The initialisation of the reference implementations (torchvision's VGG/ResNet).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # meta: shapes only (counting)
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_kaiming_fan_in(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) conv/linear weights and zero biases.

    Used by the truncated-local networks, whose paper gives no initialisation: with
    PyTorch's default (std = 1/sqrt(3·fan_in)) the drive shrinks layer by layer and the
    deeper LIF layers never reach threshold, so nothing learns; with std = sqrt(2/fan_in)
    every layer of LeNet/AlexNet fires at 20–40 % at init.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
