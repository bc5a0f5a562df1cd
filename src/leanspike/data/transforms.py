"""Augmentations and encodings in plain torch (no torchvision).

Image transforms take a float tensor ``[C, H, W]``; frame transforms take ``[T, C, H, W]``
and apply the same draw to every frame, so a sequence stays one coherent scene.
Randomness comes from an optional ``torch.Generator`` (the global one otherwise,
which DataLoader seeds per worker).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _rand(gen: torch.Generator | None) -> float:
    return float(torch.rand((), generator=gen))


def _randint(low: int, high: int, gen: torch.Generator | None) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=gen))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomCrop:
    """Zero-pad by ``padding`` on every border, then crop ``size`` at a random place."""

    def __init__(self, size: int | tuple[int, int], padding: int = 4, generator: torch.Generator | None = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding, self.gen = padding, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        x = F.pad(x, (p, p, p, p))
        h, w = self.size
        top = _randint(0, x.shape[-2] - h, self.gen)
        left = _randint(0, x.shape[-1] - w, self.gen)
        return x[..., top:top + h, left:left + w]


class RandomHorizontalFlip:
    """Mirror the last axis with probability ``p`` (all frames of a sequence together)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.gen = p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if _rand(self.gen) < self.p else x


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` centred at random pixels (clipped at borders)."""

    def __init__(self, length: int = 16, n_holes: int = 1, generator: torch.Generator | None = None):
        self.length, self.n_holes, self.gen = length, n_holes, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = x.clone()
        half = self.length // 2
        for _ in range(self.n_holes):
            cy, cx = _randint(0, h - 1, self.gen), _randint(0, w - 1, self.gen)
            x[..., max(0, cy - half):min(h, cy + half), max(0, cx - half):min(w, cx + half)] = 0
        return x


class Normalize:
    """Per-channel ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., H, W]`` (antialiased when shrinking)."""
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(1, -1, *x.shape[-2:]).float(), size=size, mode="bilinear",
                      align_corners=False, antialias=True)
    return y.reshape(*lead, *size)


class Resize:
    """Scale so the shorter side is ``size`` (aspect kept), or to exactly ``(h, w)``."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.size, int):
            h, w = x.shape[-2:]
            s = self.size / min(h, w)
            target = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            target = tuple(self.size)
        return _resize(x, target)


class CenterCrop:
    """Crop the central ``size × size`` window."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = max(0, (h - self.size) // 2), max(0, (w - self.size) // 2)
        return x[..., top:top + self.size, left:left + self.size]


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform),
    resized to ``size × size``; falls back to a centre crop after 10 failed draws."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None):
        self.size, self.scale, self.ratio, self.gen = size, scale, ratio, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * (self.scale[0] + _rand(self.gen) * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + _rand(self.gen) * (log_hi - log_lo))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = _randint(0, h - ch, self.gen), _randint(0, w - cw, self.gen)
                return _resize(x[..., top:top + ch, left:left + cw], (self.size, self.size))
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return _resize(x[..., top:top + side, left:left + side], (self.size, self.size))


class RandomRoll:
    """Shift frames circularly by independent integers in [-max_shift, max_shift] along H and W."""

    def __init__(self, max_shift: int = 5, generator: torch.Generator | None = None):
        self.max_shift, self.gen = max_shift, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dy = _randint(-self.max_shift, self.max_shift, self.gen)
        dx = _randint(-self.max_shift, self.max_shift, self.gen)
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


class ResizeFrames:
    """Resize ``[T, C, H, W]`` frames to ``size`` (bilinear; 48×48 in the SLTT CIFAR10-DVS setup)."""

    def __init__(self, size: int | tuple[int, int] = 48):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _resize(x, self.size)


def direct_encode(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, ...]`` → ``[T, B, ...]``: the same input at every step (a view, no copy)."""
    return x.unsqueeze(0).expand(T, *x.shape)


def rate_encode(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, ...]`` in [0, 1] → ``[T, B, ...]`` spikes, each step an independent Bernoulli(x)."""
    p = x.clamp(0, 1).unsqueeze(0).expand(T, *x.shape)
    return torch.bernoulli(p, generator=generator)
