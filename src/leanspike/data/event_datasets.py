"""Event-camera datasets from users' files: DVS128 Gesture, CIFAR10-DVS, N-MNIST.

Each sample is a (source file, optional time segment, label); its frames are integrated on
first access and cached on disk (see cache.py), then returned as float ``[T, 2, H, W]``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .cache import cache_key, load_frames, save_frames, source_stamp
from .events import read_aedat, read_nmnist
from .frames import FrameSpec, integrate
from .sources import find_file, hint

Transform = Callable[[torch.Tensor], torch.Tensor]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class EventSample:
    path: Path
    label: int
    segment: tuple[int, int] | None = None  # [start, end) in µs, None = whole file


class EventFrameDataset(Dataset):
    """Frames of event samples, integrated by ``spec`` and cached under ``cache_dir``
    (None = no cache). Items: ``(float32 [T, 2, H, W], label)``."""

    def __init__(self, name: str, samples: list[EventSample], reader: Callable[[Path], np.ndarray],
                 sensor: tuple[int, int], spec: FrameSpec, cache_dir: Path | None,
                 transform: Transform | None = None):
        if not samples:
            raise UserError(f"{name}: no samples found; {hint(name)}")
        self.name, self.samples, self.reader, self.sensor = name, samples, reader, sensor
        self.spec, self.cache_dir, self.transform = spec, cache_dir, transform
        self.labels = [s.label for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _key(self, s: EventSample) -> str:
        return cache_key({"dataset": self.name, "spec": self.spec.as_dict(), "sensor": self.sensor,
                          "source": source_stamp(s.path), "segment": s.segment})

    def _cache_path(self, s: EventSample) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / self.name / f"{self._key(s)}.npz"

    def _integrate(self, s: EventSample, events: np.ndarray) -> np.ndarray:
        if s.segment is not None:
            events = events[(events["t"] >= s.segment[0]) & (events["t"] < s.segment[1])]
        return integrate(events, self.spec, self.sensor, source=str(s.path))

    def frames(self, i: int) -> np.ndarray:
        """Frames of sample ``i`` as stored (uint8 binary or float32 counts)."""
        s = self.samples[i]
        if self.cache_dir is None:
            return self._integrate(s, self.reader(s.path))
        path = self._cache_path(s)
        cached = load_frames(path)
        if cached is not None:
            return cached
        # read the file once and fill the cache for every sample cut from it (DVS Gesture: ~12)
        events = self.reader(s.path)
        siblings = [o for o in self.samples if o.path == s.path]
        computed = {o: self._integrate(o, events) for o in siblings}  # all before any write
        for o, frames in computed.items():
            save_frames(self._cache_path(o), frames, binary=self.spec.integration == "window")
        return computed[s]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.asarray(self.frames(i), dtype=np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i].label


def default_cache_dir(root: Path) -> Path:
    """``root/.leanspike-cache`` when the data folder is writable, else ``~/.cache/leanspike``."""
    if os.access(root, os.W_OK):
        return root / ".leanspike-cache"
    return Path.home() / ".cache" / "leanspike"


def _read_lines(name: str, path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def dvs_gesture_samples(root: Path, train: bool) -> list[EventSample]:
    """DVS128 Gesture: the trials listed in ``trials_to_train.txt`` / ``trials_to_test.txt``;
    each trial ``userNN_<light>.aedat`` (AEDAT 3.1) is cut into gestures by its
    ``userNN_<light>_labels.csv`` (class 1–11, startTime_usec, endTime_usec)."""
    name = "dvs-gesture"
    if (root / "DvsGesture").is_dir() and not (root / "trials_to_train.txt").exists():
        root = root / "DvsGesture"
    listing = find_file(name, root, "trials_to_train.txt" if train else "trials_to_test.txt", gz_ok=False)
    samples = []
    for trial in _read_lines(name, listing):
        aedat = find_file(name, root, trial, gz_ok=False)
        labels = find_file(name, root, trial.replace(".aedat", "_labels.csv"), gz_ok=False)
        with open(labels, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if not rows or [c.strip() for c in rows[0]] != ["class", "startTime_usec", "endTime_usec"]:
            raise UserError(f"{labels}: expected header 'class,startTime_usec,endTime_usec'")
        for line, row in enumerate(rows[1:], start=2):
            try:
                cls, start, end = (int(v) for v in row)
            except ValueError:
                raise UserError(f"{labels}:{line}: expected three integers, got {row}") from None
            if not 1 <= cls <= 11 or end <= start:
                raise UserError(f"{labels}:{line}: class {cls} in {start}..{end}; expected class 1..11 "
                                "and start < end")
            samples.append(EventSample(aedat, cls - 1, (start, end)))
    return samples


def _natural_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def cifar10_dvs_samples(root: Path, train: bool, train_fraction: float = 0.9) -> list[EventSample]:
    """CIFAR10-DVS: ``root/<class>/*.aedat``. Split per class, deterministic: files sorted by
    name with numbers compared as numbers; the first ``round(0.9·n)`` train (900 of 1000),
    the rest test (100)."""
    name = "cifar10-dvs"
    samples = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        folder = root / cls
        if not folder.is_dir():
            raise UserError(f"{name}: missing class folder {folder}; {hint(name)}")
        files = sorted((p for p in folder.iterdir() if p.suffix == ".aedat"), key=_natural_key)
        if not files:
            raise UserError(f"{name}: no .aedat files in {folder}; {hint(name)}")
        n_train = round(len(files) * train_fraction)
        chosen = files[:n_train] if train else files[n_train:]
        samples += [EventSample(p, label) for p in chosen]
    return samples


def nmnist_samples(root: Path, train: bool) -> list[EventSample]:
    """N-MNIST: ``root/Train/<digit>/*.bin`` and ``root/Test/<digit>/*.bin``."""
    name = "n-mnist"
    split = root / ("Train" if train else "Test")
    samples = []
    for digit in range(10):
        folder = split / str(digit)
        if not folder.is_dir():
            raise UserError(f"{name}: missing folder {folder}; {hint(name)}")
        samples += [EventSample(p, digit) for p in sorted(folder.glob("*.bin"), key=_natural_key)]
    return samples


READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "dvs-gesture": read_aedat, "cifar10-dvs": read_aedat, "n-mnist": read_nmnist}
SENSORS: dict[str, tuple[int, int]] = {"dvs-gesture": (128, 128), "cifar10-dvs": (128, 128), "n-mnist": (34, 34)}
NUM_CLASSES: dict[str, int] = {"dvs-gesture": 11, "cifar10-dvs": 10, "n-mnist": 10}
