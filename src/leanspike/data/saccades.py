"""Event streams from still images by simulated sensor motion (a simulation, not a recording).

N-MNIST was recorded by moving an event camera in front of MNIST digits shown on a
monitor, in three small saccades along a triangle (~100 ms each); its pixels fire when
their log brightness changes. No such recording of Fashion-MNIST exists here, so this
module simulates one, vectorised over many images at once:

1. The 28×28 image (pixels in [0, 1], black background) is pasted on a 34×34 sensor
   (N-MNIST's size) and moved along a triangle: top-left offset ``start → start + leg1 →
   start + leg2 → start``, each leg ``saccade_ms`` long at constant speed, with sub-pixel
   positions rendered by bilinear interpolation.
2. The brightness is sampled ``steps_per_saccade`` times per leg; each pixel keeps the log
   intensity ``log(I + eps)`` at its last event (its reference). Whenever the current value
   differs from the reference by ``n·C`` or more (C = ``threshold``), the pixel emits n
   events, ON where brightness rose and OFF where it fell, and the reference moves by n·C.
3. Each event's time is interpolated linearly between the two samples at the moment the
   log intensity crossed its level; times are whole µs.

There is no sensor noise, no refractory period and no per-pixel threshold mismatch, which
real recordings have. The streams are written in N-MNIST's binary format
(:func:`write_nmnist`), laid out as ``Train/<class>/<id>.bin`` and ``Test/<class>/<id>.bin``,
so ``build_dataset("n-mnist", folder)`` and ``build_dataset("fashion-saccades", folder)``
read them with the whole event pipeline (frame integration, cache, augmentation).

Convert with ``python -m leanspike.data.saccades OUT --train 10000 --test 2000``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from .events import EVENT_DTYPE, make_events

SENSOR = 34
DEFAULT_ROOT = Path("~/.cache/leanspike/fashion-saccades")
META = "saccades.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SaccadeConfig:
    """Every parameter of the simulation (stored beside the converted files)."""

    threshold: float = 0.4  # C: log-intensity change per event
    eps: float = 0.1  # log(I + eps): keeps the black background finite
    saccade_ms: float = 100.0
    steps_per_saccade: int = 30
    start: tuple[int, int] = (1, 1)  # image top-left (x, y) on the sensor at t = 0
    leg1: tuple[float, float] = (2.0, 4.0)  # triangle vertices relative to start (x, y)
    leg2: tuple[float, float] = (4.0, 0.0)
    sensor: int = SENSOR

    def __post_init__(self) -> None:
        if not self.threshold > 0 or not self.eps > 0:
            raise ValueError(f"threshold {self.threshold} and eps {self.eps} must be > 0")
        if self.steps_per_saccade < 1 or not self.saccade_ms > 0:
            raise ValueError("steps_per_saccade must be >= 1 and saccade_ms > 0")
        if 3 * self.saccade_ms * 1000 >= 2 ** 23:
            raise ValueError("three saccades must fit N-MNIST's 23-bit µs timestamps (< 8.3 s)")

    def vertices(self) -> np.ndarray:
        """The path's corners (x, y) in sensor pixels: start, start+leg1, start+leg2, start."""
        s = np.array(self.start, float)
        return np.stack([s, s + self.leg1, s + self.leg2, s])

    def times_us(self) -> np.ndarray:
        """Sample times: ``3·steps_per_saccade + 1`` instants from 0 to 3·saccade_ms."""
        return np.linspace(0.0, 3 * self.saccade_ms * 1000.0, 3 * self.steps_per_saccade + 1)

    def positions(self) -> np.ndarray:
        """Image offset (x, y) at every sample time, ``[S, 2]``."""
        v, k = self.vertices(), self.steps_per_saccade
        legs = [v[i] + (v[i + 1] - v[i]) * (np.arange(k) / k)[:, None] for i in range(3)]
        return np.concatenate([*legs, v[3:]])


def render(images: np.ndarray, dx: float, dy: float, sensor: int) -> np.ndarray:
    """Images ``[N, h, w]`` in [0, 1] pasted on a black ``sensor²`` canvas with their top-left
    corner at (dx, dy) (sub-pixel: bilinear interpolation); ``[N, sensor, sensor]``."""
    n, h, w = images.shape
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy
    if ix < 0 or iy < 0 or ix + w + (fx > 0) > sensor or iy + h + (fy > 0) > sensor:
        raise ValueError(f"image at offset ({dx:.2f}, {dy:.2f}) leaves the {sensor}x{sensor} sensor")
    canvas = np.zeros((n, sensor + 1, sensor + 1), np.float32)
    for ox, oy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        if weight:
            canvas[:, iy + oy:iy + oy + h, ix + ox:ix + ox + w] += weight * images
    return canvas[:, :sensor, :sensor]


def simulate(images: np.ndarray, config: SaccadeConfig = SaccadeConfig()) -> list[np.ndarray]:
    """Event streams of images ``[N, h, w]`` (float in [0, 1] or uint8): one structured array
    of :data:`~leanspike.data.events.EVENT_DTYPE` per image, sorted by time."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images shaped {images.shape}; expected [N, H, W]")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    n, size, C = len(images), config.sensor, config.threshold
    times, positions = config.times_us(), config.positions()
    level = np.log(render(images, *positions[0], size) + config.eps)
    ref, prev = level.copy(), level
    found: list[tuple[np.ndarray, ...]] = []
    for k in range(1, len(times)):
        cur = np.log(render(images, *positions[k], size) + config.eps)
        delta = cur - ref
        count = np.floor(np.abs(delta) / C + 1e-9).astype(np.int64)
        sign = np.sign(delta)
        active = np.nonzero(count)
        if len(active[0]):
            n_ev, s_ev = count[active], sign[active]
            r_ev, p_ev, c_ev = ref[active], prev[active], cur[active]
            span = c_ev - p_ev
            span = np.where(span == 0, 1.0, span)
            for j in range(1, int(n_ev.max()) + 1):
                m = n_ev >= j
                crossing = r_ev[m] + s_ev[m] * j * C
                frac = np.clip((crossing - p_ev[m]) / span[m], 0.0, 1.0)
                t = times[k - 1] + frac * (times[k] - times[k - 1])
                found.append((active[0][m], np.rint(t).astype(np.int64), active[2][m], active[1][m],
                              (s_ev[m] > 0).astype(np.int8)))
        ref = ref + sign * count * C
        prev = cur
    if not found:
        return [np.empty(0, EVENT_DTYPE) for _ in range(n)]
    img, t, x, y, p = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((t, img))  # by image, then time (stable for equal times)
    img, t, x, y, p = img[order], t[order], x[order], y[order], p[order]
    bounds = np.searchsorted(img, np.arange(n + 1))
    return [make_events(t[a:b], x[a:b], y[a:b], p[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def nmnist_bytes(events: np.ndarray) -> bytes:
    """N-MNIST binary encoding: per event x, y (8 bits each), polarity (1 bit), timestamp
    (23 bits, µs), big-endian; the inverse of :func:`~leanspike.data.events.read_nmnist`."""
    t, x, y, p = (events[f].astype(np.int64) for f in ("t", "x", "y", "p"))
    if len(events) and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255
                        or t.min() < 0 or t.max() >= 2 ** 23 or not np.isin(p, (0, 1)).all()):
        raise ValueError("N-MNIST events need 0 <= x, y <= 255, 0 <= t < 2^23 µs and polarity 0/1")
    raw = np.stack([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    return raw.astype(np.uint8).tobytes()


def write_nmnist(path: Path, events: np.ndarray) -> None:
    """Write ``events`` to ``path`` atomically (temporary file then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(nmnist_bytes(events))
    os.replace(tmp, path)


def convert_split(images: np.ndarray, labels: np.ndarray, out: Path, config: SaccadeConfig = SaccadeConfig(),
                  ids: np.ndarray | None = None, chunk: int = 500, num_classes: int = 10) -> int:
    """Simulate and write ``out/<label>/<id>.bin`` for every image (every class folder is
    created, as the N-MNIST reader expects, even when empty); returns the event count."""
    ids = np.arange(len(images)) if ids is None else ids
    for c in range(num_classes):
        (Path(out) / str(c)).mkdir(parents=True, exist_ok=True)
    total = 0
    for a in range(0, len(images), chunk):
        for ev, label, i in zip(simulate(images[a:a + chunk], config), labels[a:a + chunk], ids[a:a + chunk]):
            write_nmnist(Path(out) / str(int(label)) / f"{int(i)}.bin", ev)
            total += len(ev)
    return total


def convert_fashion_mnist(out: str | Path, source: str | Path | None = None, n_train: int | None = 10000,
                          n_test: int | None = 2000, config: SaccadeConfig = SaccadeConfig(),
                          log=print) -> Path:
    """Convert the first ``n_train`` / ``n_test`` Fashion-MNIST images (None = all) into an
    N-MNIST-style folder ``out``. Does nothing when ``out`` already holds this conversion."""
    from .factory import FASHION_MNIST_SYSTEM_ROOT
    from .images import load_mnist_like
    from .sources import require_root

    out = Path(out).expanduser()
    root = require_root("fashion-mnist", source if source is not None else
                        (FASHION_MNIST_SYSTEM_ROOT if FASHION_MNIST_SYSTEM_ROOT.is_dir() else None))
    meta = {"format_version": FORMAT_VERSION, "source": "fashion-mnist", "n_train": n_train, "n_test": n_test,
            "config": asdict(config)}
    meta_path = out / META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} == json.loads(json.dumps(meta)):
            log(f"{out}: already converted with these settings")
            return out
        raise UserError(f"{meta_path}: holds a conversion with other settings; choose another folder or remove it")
    counts = {}
    for split, train, limit in (("Train", True, n_train), ("Test", False, n_test)):
        images, labels = load_mnist_like("fashion-mnist", root, train)
        images, labels = images[:limit, 0].numpy(), labels[:limit].numpy()
        events = convert_split(images, labels, out / split, config)
        counts[split] = {"samples": len(images), "events": events}
        log(f"{out / split}: {len(images)} samples, {events / max(len(images), 1):.0f} events per sample")
    meta["counts"] = counts
    meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks a finished conversion
    return out


def saccade_root(root: str | Path | None) -> Path:
    """The converted folder (``root`` or the default), which must hold a finished conversion."""
    path = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    if not (path / META).is_file():
        raise UserError(f"fashion-saccades: no converted data in {path} (missing {META}); create it with "
                        f"`python -m leanspike.data.saccades {path}` (docs/temporal_tasks.md)")
    return path


def build_fashion_saccades(root, train: bool, T: int, options: dict):
    """``build_dataset("fashion-saccades", ...)``: the converted folder read as N-MNIST."""
    from .factory import _build_events

    ds, info = _build_events("n-mnist", saccade_root(root), train, T, options)
    ds.name = "fashion-saccades"
    return ds, replace(info, name="fashion-saccades")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leanspike.data.saccades",
                                description="Convert Fashion-MNIST into simulated N-MNIST-style saccade event streams.")
    p.add_argument("out", nargs="?", default=str(DEFAULT_ROOT), help=f"output folder (default {DEFAULT_ROOT})")
    p.add_argument("--source", default=None, help="Fashion-MNIST IDX folder (default: the system copy)")
    p.add_argument("--train", type=int, default=10000, help="first N training images (0 = all)")
    p.add_argument("--test", type=int, default=2000, help="first N test images (0 = all)")
    p.add_argument("--threshold", type=float, default=SaccadeConfig.threshold, help="log-intensity step C")
    args = p.parse_args(argv)
    try:
        convert_fashion_mnist(args.out, args.source, args.train or None, args.test or None,
                              SaccadeConfig(threshold=args.threshold))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
