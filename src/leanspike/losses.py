"""Losses over a window of output steps.

Every loss takes ``outputs`` shaped ``[t, B, C]`` (a window of the T steps), the
integer targets ``[B]`` and the total number of steps ``T``, and returns a scalar.
``decomposes`` says how far a loss can be split, which decides which methods may use it:

- ``"step"``: a sum of per-step terms divided by T; any schedule can use it, and the
  sum of the windows' losses equals the loss over all T steps.
- ``"interval"``: defined per truncation interval (the truncated-local rate MSE).
- ``"none"``: needs all T steps at once (CE of the time-averaged output): BPTT only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class WindowLoss:
    decomposes = "none"
    name = "base"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, total_steps: int) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    if outputs.dim() != 3:
        raise ValueError(f"loss expects outputs shaped [t, B, C], got {tuple(outputs.shape)}")
    if targets.shape[0] != outputs.shape[1]:
        raise ValueError(f"targets hold {targets.shape[0]} labels for a batch of {outputs.shape[1]}")


class PerStepCE(WindowLoss):
    """``Σ_t CE(o[t], y) / T``: cross-entropy at every step (TET-style)."""

    decomposes = "step"
    name = "ce"

    def __call__(self, outputs, targets, total_steps):
        _check(outputs, targets)
        t, b, c = outputs.shape
        ce = F.cross_entropy(outputs.reshape(t * b, c), targets.repeat(t), reduction="sum") / b
        return ce / total_steps


class SLTTLoss(WindowLoss):
    """``Σ_t [(1−λ)·CE(o[t], y) + λ·MSE(o[t], target)] / T`` (SLTT supplement S13/S14).

    ``target="constant"`` regresses every output to ``value`` (V_th, the paper's static
    datasets); ``target="onehot"`` to the one-hot label (its DVS-CIFAR10 setting).
    """

    decomposes = "step"
    name = "sltt"

    def __init__(self, lambda_mse: float = 0.05, target: str = "constant", value: float = 1.0) -> None:
        if not 0.0 <= lambda_mse <= 1.0:
            raise ValueError(f"lambda_mse must be in [0, 1], got {lambda_mse}")
        if target not in ("constant", "onehot"):
            raise ValueError(f"target must be 'constant' or 'onehot', got {target!r}")
        self.lambda_mse, self.target, self.value = float(lambda_mse), target, float(value)

    def __repr__(self) -> str:
        return f"SLTTLoss(lambda_mse={self.lambda_mse}, target={self.target!r}, value={self.value})"

    def __call__(self, outputs, targets, total_steps):
        _check(outputs, targets)
        t, b, c = outputs.shape
        flat = outputs.reshape(t * b, c)
        ce = F.cross_entropy(flat, targets.repeat(t), reduction="sum") / b
        if self.target == "constant":
            goal = torch.full_like(flat, self.value)
        else:
            goal = F.one_hot(targets, c).to(outputs.dtype).repeat(t, 1)
        mse = F.mse_loss(flat, goal, reduction="sum") / (b * c)
        return ((1 - self.lambda_mse) * ce + self.lambda_mse * mse) / total_steps


class MeanOutputCE(WindowLoss):
    """``CE(mean_t o[t], y)``: needs every step at once, so only BPTT can use it."""

    decomposes = "none"
    name = "mean-ce"

    def __call__(self, outputs, targets, total_steps):
        _check(outputs, targets)
        if outputs.shape[0] != total_steps:
            raise ValueError("MeanOutputCE needs all T steps in one window (use BPTT)")
        return F.cross_entropy(outputs.mean(0), targets)


class RateMSE(WindowLoss):
    """Truncated-local Eq. (3): ``(1/N_c)·Σ_i (y_i − mean_t s_i[t])²`` over one interval,
    averaged over the batch, with a one-hot ``y``. Each interval is its own loss."""

    decomposes = "interval"
    name = "rate-mse"

    def __call__(self, outputs, targets, total_steps):
        _check(outputs, targets)
        c = outputs.shape[2]
        rate = outputs.mean(0)
        goal = F.one_hot(targets, c).to(outputs.dtype)
        return F.mse_loss(rate, goal)


LOSSES = {"ce": PerStepCE, "sltt": SLTTLoss, "mean-ce": MeanOutputCE, "rate-mse": RateMSE}


def make_loss(name: str, **kwargs) -> WindowLoss:
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
    return cls(**kwargs)
