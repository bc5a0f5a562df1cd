"""Static image datasets from users' files: IDX (MNIST family), CIFAR batches, class folders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .idx import read_idx
from .safe_pickle import load_restricted
from .sources import find_file, hint

Transform = Callable[[torch.Tensor], torch.Tensor]

EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}


class ImageTensorDataset(Dataset):
    """uint8 images ``[N, C, H, W]`` kept in memory; items are floats in [0, 1] after ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 [N, C, H, W] with one label each")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def _check_labels(name: str, path: Path, labels: np.ndarray, n_images: int, num_classes: int) -> None:
    if labels.ndim != 1:
        raise UserError(f"{name}: {path} holds an array of shape {labels.shape}; expected 1-D labels")
    if len(labels) != n_images:
        raise UserError(f"{name}: {path} has {len(labels)} labels; expected {n_images} (one per image)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{name}: {path} has labels in [{labels.min()}, {labels.max()}]; "
                        f"expected 0..{num_classes - 1}")


def _integer_labels(raw: object, path: Path, what: str) -> np.ndarray:
    """``raw`` as int64 class indices; a one-line error for anything but integers (a float
    label would be truncated silently)."""
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError):
        labels = np.asarray(None)
    if labels.size and labels.dtype.kind not in "iu":
        raise UserError(f"{path}: {what} are {labels.dtype} ({type(raw).__name__}); expected integer class indices")
    return labels.astype(np.int64)


def load_idx_pair(name: str, root: Path, image_stem: str, label_stem: str, num_classes: int,
                  size: tuple[int, int] = (28, 28), label_offset: int = 0,
                  transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, H, W]`` uint8 and labels from an IDX images/labels pair."""
    img_path = find_file(name, root, image_stem)
    lbl_path = find_file(name, root, label_stem)
    images = read_idx(img_path)
    if images.ndim != 3 or images.shape[1:] != size or images.dtype != np.uint8:
        raise UserError(f"{name}: {img_path} holds {images.dtype} images of shape {images.shape[1:]}; "
                        f"expected uint8 {size[0]}x{size[1]}")
    labels = _integer_labels(read_idx(lbl_path), lbl_path, "labels") - label_offset
    _check_labels(name, lbl_path, labels, len(images), num_classes)
    if transposed:  # EMNIST stores each image with rows and columns swapped
        images = images.transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), torch.from_numpy(labels)


def _idx_root(root: Path, *subdirs: str) -> Path:
    """The folder holding the IDX files: root itself or a conventional subfolder."""
    for sub in subdirs:
        if (root / sub).is_dir() and not any(root.glob("*-ubyte*")):
            return root / sub
    return root


def load_mnist_like(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST: ``train-images-idx3-ubyte[.gz]`` etc. in ``root`` (or root/raw)."""
    root = _idx_root(root, "raw")
    prefix = "train" if train else "t10k"
    return load_idx_pair(name, root, f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte", 10)


def load_emnist(root: Path, train: bool, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """EMNIST ``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]`` (root or root/gzip)."""
    if split not in EMNIST_CLASSES:
        raise UserError(f"emnist: unknown split {split!r}; expected one of {sorted(EMNIST_CLASSES)}")
    root = _idx_root(root, "gzip", "raw")
    part = "train" if train else "test"
    return load_idx_pair("emnist", root, f"emnist-{split}-{part}-images-idx3-ubyte",
                         f"emnist-{split}-{part}-labels-idx1-ubyte", EMNIST_CLASSES[split],
                         label_offset=1 if split == "letters" else 0, transposed=True)


def _field(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise UserError(f"{path}: CIFAR batch has no {key!r} entry (found {sorted(map(str, batch))})")


def load_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 python batches in ``root`` (or root/cifar-10-batches-py, root/cifar-100-python)."""
    ten = name == "cifar10"
    sub = "cifar-10-batches-py" if ten else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if ten:
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    else:
        files = ["train" if train else "test"]
    label_key, num_classes = ("labels", 10) if ten else ("fine_labels", 100)
    images, labels = [], []
    for stem in files:
        path = find_file(name, root, stem, gz_ok=False)
        batch = load_restricted(path)
        if not isinstance(batch, dict):
            raise UserError(f"{path}: expected a dict in a CIFAR batch, got {type(batch).__name__}")
        data = np.asarray(_field(batch, "data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{path}: 'data' is {data.dtype} of shape {data.shape}; expected uint8 [N, 3072] "
                            "(32x32 RGB)")
        lbl = _integer_labels(_field(batch, label_key, path), path, label_key)
        _check_labels(name, path, lbl, len(data), num_classes)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lbl)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class ImageFolder(Dataset):
    """``root/<class>/<image>``: class index = position of the folder name in sorted order.

    Decoded with Pillow (optional extra ``leanspike[images]``) on access, converted to RGB.
    """

    def __init__(self, root: Path, transform: Transform | None = None, name: str = "imagenet",
                 classes: Sequence[str] | None = None):
        self.root, self.transform, self.name = Path(root), transform, name
        if not self.root.is_dir():
            raise UserError(f"{name}: image folder {self.root} not found; {hint(name)}")
        self.classes = list(classes) if classes is not None else sorted(
            d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise UserError(f"{name}: {self.root} has no class folders; expected {self.root}/<class>/<image>")
        self.samples: list[tuple[Path, int]] = []
        for idx, cls in enumerate(self.classes):
            folder = self.root / cls
            if not folder.is_dir():
                raise UserError(f"{name}: class folder {folder} not found")
            self.samples += [(p, idx) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise UserError(f"{name}: no images ({'/'.join(IMAGE_SUFFIXES)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        x = decode_image(path)
        if self.transform is not None:
            x = self.transform(x)
        return x, label


def decode_image(path: Path) -> torch.Tensor:
    """An RGB image file as float ``[3, H, W]`` in [0, 1]."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image folders need Pillow: pip install 'leanspike[images]'") from None
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises several types for corrupt files
        raise UserError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
