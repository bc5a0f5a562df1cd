"""One entry point for the trainer: ``build_dataset`` → (Dataset, DatasetInfo), and
``to_time_major`` to turn a batch into the time-first input of the methods."""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import transforms as tf
from .sources import hint, require_root

STATIC = ("digits", "mnist", "emnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")
EVENTS = ("dvs-gesture", "cifar10-dvs", "n-mnist")
TEMPORAL = ("seq-mnist", "seq-fashion-mnist", "fashion-saccades")  # docs/temporal_tasks.md
DATASET_NAMES = STATIC + EVENTS + TEMPORAL
ENCODINGS = ("direct", "rate", "frames")

FASHION_MNIST_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")

MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "emnist": ((0.1751,), (0.3332,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_COMMON = {"augment", "encoding"}
OPTIONS: dict[str, set[str]] = {
    "digits": {"encoding", "seed", "test_fraction"},
    "mnist": {"encoding", "normalize"},
    "fashion-mnist": {"encoding", "normalize"},
    "emnist": {"encoding", "normalize", "split"},
    "cifar10": _COMMON | {"normalize", "cutout"},
    "cifar100": _COMMON | {"normalize", "cutout"},
    "imagenet": _COMMON | {"normalize"},
    "dvs-gesture": {"augment", "integration", "window_ms", "size", "cache_dir", "cache", "roll"},
    "cifar10-dvs": {"augment", "integration", "window_ms", "size", "cache_dir", "cache", "roll",
                    "train_fraction"},
    "n-mnist": {"augment", "integration", "window_ms", "size", "cache_dir", "cache", "roll"},
    "seq-mnist": {"mode", "width", "layout"},
    "seq-fashion-mnist": {"mode", "width", "layout"},
    "fashion-saccades": {"augment", "integration", "window_ms", "size", "cache_dir", "cache", "roll"},
}


def _integer(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, high: float = math.inf, open_low: bool = False):
    def ok(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (low < v if open_low else low <= v) \
            and v < high
    return ok


def _side_or_pair(v) -> bool:
    return _integer(1)(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_integer(1), v)))


#: the numeric and on/off options: (check, what is expected) — a typo'd value must not pass as
#: another (``augment: maybe`` is truthy, a negative fraction slices from the end)
_OPTION_KINDS = {
    "seed": (_integer(0), "an integer >= 0"),
    "test_fraction": (_number(0, 1, open_low=True), "a number in (0, 1)"),
    "train_fraction": (_number(0, 1, open_low=True), "a number in (0, 1)"),
    "window_ms": (lambda v: v is None or _number(0, open_low=True)(v), "a number of milliseconds > 0"),
    "size": (lambda v: v is None or _side_or_pair(v), "a positive integer or [height, width]"),
    "roll": (_integer(0), "an integer >= 0 (pixels)"),
    "cutout": (_integer(0), "an integer >= 0 (pixels)"),
    "width": (_integer(1), "a positive integer"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "cache": (lambda v: isinstance(v, bool), "true or false"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to build a model and feed it.

    ``kind`` is ``"static"`` for images ``[C, H, W]`` (encoded over T by ``to_time_major``
    with ``encoding`` "direct" or "rate") or ``"frames"`` for ``[T, C, H, W]`` sequences.
    """

    name: str
    in_channels: int
    input_size: tuple[int, int]
    num_classes: int
    kind: str
    encoding: str
    T: int

    @property
    def is_frames(self) -> bool:
        return self.kind == "frames"


def to_time_major(x_batch: torch.Tensor, T: int, encoding: str,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A loader batch → ``[T, B, ...]``: static ``[B, C, H, W]`` repeated (direct) or sampled
    as Bernoulli spikes (rate); frames ``[B, T, C, H, W]`` transposed."""
    if encoding == "direct":
        return tf.direct_encode(x_batch, T)
    if encoding == "rate":
        return tf.rate_encode(x_batch, T, generator)
    if encoding == "frames":
        if x_batch.ndim < 3 or x_batch.shape[1] != T:
            raise ValueError(f"frames batch of shape {tuple(x_batch.shape)}; expected [B, T={T}, ...]")
        return x_batch.transpose(0, 1).contiguous()
    raise ValueError(f"encoding {encoding!r} unknown; expected one of {ENCODINGS}")


def build_dataset(name: str, root: str | Path | None, *, train: bool, T: int,
                  **options: Any) -> tuple[Dataset, DatasetInfo]:
    """The dataset ``name`` read from ``root`` (layouts in docs/datasets.md).

    Options (all optional): ``augment`` (CIFAR, ImageNet, events; default: on for training,
    except DVS Gesture and N-MNIST, where flips change meaning or are not customary), ``encoding`` ("direct"/"rate"),
    ``normalize``, ``split`` (EMNIST: letters, balanced, ...), ``cutout`` (CIFAR hole side,
    0 = off), ``integration`` ("count"/"window"), ``window_ms``, ``size`` (frames' H=W or
    (H, W)), ``cache`` / ``cache_dir``, ``roll`` (max shift of the frame roll), ``train_fraction``.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T = {T!r}; expected an integer >= 1")
    unknown = set(options) - OPTIONS[name]
    if unknown:
        raise ValueError(f"{name}: unknown options {sorted(unknown)}; accepted: {sorted(OPTIONS[name])}")
    for key, value in options.items():
        check = _OPTION_KINDS.get(key)
        if check is not None and not check[0](value):
            raise ValueError(f"{name}: option {key} must be {check[1]}, got {value!r}")
    if name in EVENTS:
        return _build_events(name, root, train, T, options)
    if name == "fashion-saccades":
        from .saccades import build_fashion_saccades

        return build_fashion_saccades(root, train, T, options)
    if name in TEMPORAL:
        return _build_sequential(name, root, train, T, options)
    encoding = options.get("encoding", "direct")
    if encoding not in ("direct", "rate"):
        raise ValueError(f"encoding {encoding!r}; expected 'direct' or 'rate' for static images")
    if name == "digits":
        return _build_digits(train, T, encoding, options)
    if name == "imagenet":
        return _build_imagenet(root, train, T, encoding, options)
    return _build_tensor_images(name, root, train, T, encoding, options)


def _build_digits(train: bool, T: int, encoding: str, options: dict) -> tuple[Dataset, DatasetInfo]:
    from .builtin import load_digits_split

    tr, te = load_digits_split(test_fraction=options.get("test_fraction", 0.2), seed=options.get("seed", 0))
    return (tr if train else te), DatasetInfo("digits", 1, (8, 8), 10, "static", encoding, T)


def _normalize(name: str, options: dict, default: bool) -> list:
    """Per-channel normalisation; never on by default under rate encoding (rates need [0, 1])."""
    rate = options.get("encoding", "direct") == "rate"
    if not options.get("normalize", default and not rate):
        return []
    if rate:
        raise ValueError("normalize=True with rate encoding: Bernoulli rates need pixels in [0, 1]")
    return [tf.Normalize(*MEAN_STD[name])]


def _build_tensor_images(name: str, root, train: bool, T: int, encoding: str,
                         options: dict) -> tuple[Dataset, DatasetInfo]:
    from .images import EMNIST_CLASSES, ImageTensorDataset, load_cifar, load_emnist, load_mnist_like

    if name == "fashion-mnist" and root is None and FASHION_MNIST_SYSTEM_ROOT.is_dir():
        root = FASHION_MNIST_SYSTEM_ROOT
    path = require_root(name, root)
    augment = options.get("augment", train)
    steps: list = []
    if name in ("cifar10", "cifar100"):
        images, labels = load_cifar(name, path, train)
        num_classes = 10 if name == "cifar10" else 100
        if augment:
            steps += [tf.RandomCrop(32, padding=4), tf.RandomHorizontalFlip()]
        steps += _normalize(name, options, default=True)
        cutout = options.get("cutout", 16)
        if augment and cutout:  # after normalisation, so holes are zero = the mean
            steps.append(tf.Cutout(cutout))
    else:
        if name == "emnist":
            split = options.get("split", "balanced")
            images, labels = load_emnist(path, train, split)
            num_classes = EMNIST_CLASSES[split]
        else:
            images, labels = load_mnist_like(name, path, train)
            num_classes = 10
        steps += _normalize(name, options, default=False)
    ds = ImageTensorDataset(images, labels, tf.Compose(steps) if steps else None)
    c, h, w = images.shape[1:]
    return ds, DatasetInfo(name, c, (h, w), num_classes, "static", encoding, T)


def _build_sequential(name: str, root, train: bool, T: int, options: dict) -> tuple[Dataset, DatasetInfo]:
    """Images fed a row (or column strip) per step: samples ``[T, F]`` or ``[T, w, L]``."""
    from .images import load_mnist_like
    from .sequential import SequentialImages

    source = name[len("seq-"):]
    if source == "fashion-mnist" and root is None and FASHION_MNIST_SYSTEM_ROOT.is_dir():
        root = FASHION_MNIST_SYSTEM_ROOT
    images, labels = load_mnist_like(source, require_root(source, root), train)
    ds = SequentialImages(images, labels, options.get("mode", "rows"), options.get("width", 1),
                          options.get("layout", "flat"))
    if T != ds.T:
        raise ValueError(f"{name}: mode {ds.mode!r} with width {ds.width} gives T = {ds.T} steps; got T = {T}")
    shape = ds.step_shape()
    channels, length = (1, shape[0]) if len(shape) == 1 else shape
    return ds, DatasetInfo(name, channels, (1, length), 10, "frames", "frames", T)


def _build_imagenet(root, train: bool, T: int, encoding: str, options: dict) -> tuple[Dataset, DatasetInfo]:
    from .images import ImageFolder

    path = require_root("imagenet", root)
    split = path / ("train" if train else "val")
    if not split.is_dir():
        raise UserError(f"imagenet: missing folder {split}; {hint('imagenet')}")
    if options.get("augment", train):
        steps: list = [tf.RandomResizedCrop(224), tf.RandomHorizontalFlip()]
    else:
        steps = [tf.Resize(256), tf.CenterCrop(224)]
    steps += _normalize("imagenet", options, default=True)
    classes = sorted(d.name for d in (path / "train").iterdir() if d.is_dir()) if (path / "train").is_dir() else None
    ds = ImageFolder(split, tf.Compose(steps), classes=classes)
    return ds, DatasetInfo("imagenet", 3, (224, 224), len(ds.classes), "static", encoding, T)


def _build_events(name: str, root, train: bool, T: int, options: dict) -> tuple[Dataset, DatasetInfo]:
    from .event_datasets import (NUM_CLASSES, READERS, SENSORS, EventFrameDataset, cifar10_dvs_samples,
                                 default_cache_dir, dvs_gesture_samples, nmnist_samples)
    from .frames import FrameSpec

    path = require_root(name, root)
    integration = options.get("integration", "count")
    window_ms = options.get("window_ms")
    size = options.get("size")
    if isinstance(size, int):
        size = (size, size)
    window_us = None if window_ms is None else int(round(float(window_ms) * 1000))
    if integration == "count" and window_us is not None:
        raise ValueError("window_ms applies to integration='window' only")
    spec = FrameSpec(integration, T, window_us, None if size is None else (int(size[0]), int(size[1])))
    if name == "dvs-gesture":
        samples = dvs_gesture_samples(path, train)
    elif name == "cifar10-dvs":
        samples = cifar10_dvs_samples(path, train, options.get("train_fraction", 0.9))
    else:
        samples = nmnist_samples(path, train)
    cache_dir = None
    if options.get("cache", True):
        cache_dir = Path(options["cache_dir"]) if options.get("cache_dir") else default_cache_dir(path)
    steps: list = []
    if options.get("augment", train and name == "cifar10-dvs"):
        steps = [tf.RandomHorizontalFlip(), tf.RandomRoll(options.get("roll", 5))]
    ds = EventFrameDataset(name, samples, READERS[name], SENSORS[name], spec, cache_dir,
                           tf.Compose(steps) if steps else None)
    hw = spec.size or SENSORS[name]
    return ds, DatasetInfo(name, 2, tuple(hw), NUM_CLASSES[name], "frames", "frames", T)
