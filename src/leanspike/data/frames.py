"""Event streams → two-channel frames ``[T, 2, H, W]`` (channel = polarity: 0 OFF, 1 ON).

Two integrations, one per paper:

* ``window``: fixed time windows of Δt from the first event; frame t holds the events of
  window t as binary pixels; only the first T windows are kept (missing ones stay zero).
* ``count``: events (time-sorted) split into T consecutive slices of equal size
  (slice i = events ``floor(i·N/T)`` … ``floor((i+1)·N/T) − 1``, so sizes differ by at most one);
  each frame holds per-pixel event counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

INTEGRATIONS = ("window", "count")


@dataclass(frozen=True)
class FrameSpec:
    """Every parameter that shapes the frames (and so the cache key)."""

    integration: str
    T: int
    window_us: int | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.integration not in INTEGRATIONS:
            raise UserError(f"integration {self.integration!r} unknown; expected one of {INTEGRATIONS}")
        if self.T < 1:
            raise UserError(f"T = {self.T}; expected T >= 1 frames")
        if self.integration == "window" and (self.window_us is None or self.window_us <= 0):
            raise UserError(f"window integration needs window_ms > 0, got {self.window_us} µs")

    def as_dict(self) -> dict:
        return asdict(self)


def _check_coords(events: np.ndarray, H: int, W: int, source: str) -> None:
    if len(events) and (events["x"].max() >= W or events["y"].max() >= H
                        or events["x"].min() < 0 or events["y"].min() < 0):
        raise UserError(f"{source}: event coordinates up to x={events['x'].max()}, y={events['y'].max()}; "
                        f"expected a {W}x{H} sensor")


def _scatter(frame_idx: np.ndarray, events: np.ndarray, T: int, H: int, W: int) -> np.ndarray:
    lin = ((frame_idx * 2 + events["p"].astype(np.int64)) * H + events["y"]) * W + events["x"]
    return np.bincount(lin, minlength=T * 2 * H * W).reshape(T, 2, H, W)


def window_frames(events: np.ndarray, T: int, window_us: int, H: int, W: int, source: str = "events") -> np.ndarray:
    """Binary uint8 ``[T, 2, H, W]``: pixel set when any event falls in that Δt window."""
    _check_coords(events, H, W, source)
    if len(events) == 0:
        return np.zeros((T, 2, H, W), np.uint8)
    idx = (events["t"] - events["t"].min()) // window_us
    keep = idx < T
    return (_scatter(idx[keep], events[keep], T, H, W) > 0).astype(np.uint8)


def count_frames(events: np.ndarray, T: int, H: int, W: int, source: str = "events") -> np.ndarray:
    """Event counts ``[T, 2, H, W]`` (float32), each frame from an equal share of the events."""
    _check_coords(events, H, W, source)
    events = events[np.argsort(events["t"], kind="stable")]
    n = len(events)
    bounds = (np.arange(T + 1, dtype=np.int64) * n) // T  # slice i = events bounds[i] .. bounds[i+1]-1
    idx = np.searchsorted(bounds, np.arange(n, dtype=np.int64), side="right") - 1
    return _scatter(idx, events, T, H, W).astype(np.float32)


def resize_frames(frames: np.ndarray, size: tuple[int, int], binary: bool) -> np.ndarray:
    """Binary frames: a pixel is set when any source pixel in its cell is (adaptive max pool).
    Counts: bilinear interpolation with antialiasing."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if binary:
        return F.adaptive_max_pool2d(x, size).numpy().astype(np.uint8)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).numpy()


def integrate(events: np.ndarray, spec: FrameSpec, sensor: tuple[int, int], source: str = "events") -> np.ndarray:
    """Frames for one sample under ``spec`` (uint8 binary for ``window``, float32 counts for ``count``)."""
    H, W = sensor
    if spec.integration == "window":
        frames = window_frames(events, spec.T, spec.window_us, H, W, source)
    else:
        frames = count_frames(events, spec.T, H, W, source)
    if spec.size is not None and tuple(spec.size) != (H, W):
        frames = resize_frames(frames, tuple(spec.size), binary=spec.integration == "window")
    return frames
