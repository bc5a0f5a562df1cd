"""Where each dataset's files come from, and checks that name the missing piece.

Nothing is downloaded: a missing file gives a one-line UserError saying what was
expected and where to get it (docs/datasets.md has the full layouts).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

WHERE_TO_GET: dict[str, str] = {
    "mnist": "get the four IDX files from http://yann.lecun.com/exdb/mnist/",
    "emnist": "get the 'gzip' IDX archive from https://www.nist.gov/itl/products-and-services/emnist-dataset",
    "fashion-mnist": ("apt-get install dataset-fashion-mnist (files land in /usr/share/datasets/fashion-mnist/) "
                      "or get them from https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": "get 'CIFAR-10 python version' from https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "get 'CIFAR-100 python version' from https://www.cs.toronto.edu/~kriz/cifar.html",
    "imagenet": "get ILSVRC2012 from https://image-net.org/download and arrange train/ and val/ into class folders",
    "dvs-gesture": "get DvsGesture.tar.gz from https://research.ibm.com/interactive/dvsgesture/",
    "cifar10-dvs": "get CIFAR10-DVS from https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671",
    "n-mnist": "get Train.zip and Test.zip from https://www.garrickorchard.com/datasets/n-mnist",
}

DOCS = "docs/datasets.md"


def hint(name: str) -> str:
    return f"{WHERE_TO_GET[name]} (layout: {DOCS})"


def require_root(name: str, root: str | Path | None) -> Path:
    """The dataset folder, which must exist."""
    if root is None:
        raise UserError(f"{name}: no data root given; {hint(name)}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{name}: data root {path} not found; {hint(name)}")
    return path


def find_file(name: str, root: Path, stem: str, gz_ok: bool = True) -> Path:
    """``root/stem`` or ``root/stem.gz``; a UserError naming the file otherwise."""
    for candidate in ([root / stem, root / (stem + ".gz")] if gz_ok else [root / stem]):
        if candidate.is_file():
            return candidate
    raise UserError(f"{name}: missing file {root / stem}{'[.gz]' if gz_ok else ''}; {hint(name)}")
