"""Surrogate gradients for the Heaviside spike function.

The forward pass is always the exact step ``H(x)`` with ``x = u - V_th``; only the
backward pass differs. Each surrogate is a small frozen dataclass so that it can be
stored in configs and compared, and it exposes ``derivative(x)`` so tests can check
the formulas directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Surrogate:
    """Base class: ``derivative(x)`` is the pseudo-derivative dH/dx used in backward."""

    name = "base"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        """``derivative(x)``, allowed to overwrite ``x`` (a scratch tensor) to save a pass."""
        return self.derivative(x)

    def spike(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside forward with this surrogate's backward."""
        return SpikeFunction.apply(x, self)


@dataclass(frozen=True)
class Rectangle(Surrogate):
    """``(1/γ)·1(|x| < γ/2)`` (SLTT Eq. 5, truncated-local Eq. 6)."""

    width: float = 1.0
    name = "rectangle"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() < self.width / 2).to(x.dtype) / self.width

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lt(x.abs_(), self.width / 2, out=x).div_(self.width)


@dataclass(frozen=True)
class Triangle(Surrogate):
    """``(1/γ²)·max(0, γ − |x|)`` (SLTT Eq. 6)."""

    width: float = 1.0
    name = "triangle"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.width - x.abs()).clamp_min(0) / (self.width * self.width)

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs_().neg_().add_(self.width).clamp_min_(0).div_(self.width * self.width)


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of ``sigmoid(α·x)``: ``α·σ(αx)·(1 − σ(αx))``."""

    alpha: float = 4.0
    name = "sigmoid"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        sg = torch.sigmoid(self.alpha * x)
        return self.alpha * sg * (1 - sg)

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        sg = x.mul_(self.alpha).sigmoid_()
        alpha = sg.new_full((), self.alpha).expand_as(sg)  # one fused pass: α·(1 − σ)·σ (a fill, no host copy)
        return torch.ops.aten.sigmoid_backward.grad_input(alpha, sg, grad_input=sg)


@dataclass(frozen=True)
class Atan(Surrogate):
    """Derivative of ``(1/π)·atan(π/2·α·x) + 1/2``: ``α/2 / (1 + (π/2·α·x)²)``."""

    alpha: float = 2.0
    name = "atan"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)


class SpikeFunction(torch.autograd.Function):
    """``H(x)`` forward, ``surrogate.derivative(x)`` backward; saves only ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


SURROGATES = {"rectangle": Rectangle, "triangle": Triangle, "sigmoid": Sigmoid, "atan": Atan}


def make_surrogate(name: str, width: float | None = None, alpha: float | None = None, v_threshold: float = 1.0) -> Surrogate:
    """Build a surrogate by name; ``width`` defaults to ``v_threshold`` (γ = V_th)."""
    key = name.lower()
    if key in ("rectangle", "triangle"):
        w = v_threshold if width is None else width
        if w <= 0:
            raise ValueError(f"surrogate width must be > 0, got {w}")
        return SURROGATES[key](width=float(w))
    if key in ("sigmoid", "atan"):
        return SURROGATES[key]() if alpha is None else SURROGATES[key](alpha=float(alpha))
    raise ValueError(f"unknown surrogate {name!r}; expected one of {sorted(SURROGATES)}")
