"""Static image datasets from files written here in their real formats (IDX, CIFAR batches, PNG folders)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from leanspike.data import DATASET_NAMES, build_dataset, to_time_major
from leanspike.errors import UserError


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    """IDX written by hand: 0, 0, type 0x08 (uint8), ndim, big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    body = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(body)


def make_mnist(root, n_train=6, n_test=4, gz=True, size=28, prefix="", seed=0, label_max=10, label_offset=0):
    rng = np.random.default_rng(seed)
    out = {}
    suffix = ".gz" if gz else ""
    for part, n, img_stem, lbl_stem in [("train", n_train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                        ("test", n_test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]:
        if prefix:
            img_stem, lbl_stem = f"{prefix}-{part}-images-idx3-ubyte", f"{prefix}-{part}-labels-idx1-ubyte"
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(label_offset, label_max + label_offset, n, dtype=np.uint8)
        write_idx(root / (img_stem + suffix), images, gz)
        write_idx(root / (lbl_stem + suffix), labels, gz)
        out[part] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx_decoded_exactly(tmp_path, gz, name):
    written = make_mnist(tmp_path, gz=gz)
    for train, part in [(True, "train"), (False, "test")]:
        ds, info = build_dataset(name, tmp_path, train=train, T=3)
        images, labels = written[part]
        assert len(ds) == len(images)
        assert (info.in_channels, info.input_size, info.num_classes, info.kind) == (1, (28, 28), 10, "static")
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (1, 28, 28) and x.dtype == torch.float32
            assert torch.equal(x[0], torch.from_numpy(images[i]).float() / 255)
            assert y == labels[i]


def test_fashion_mnist_found_in_system_folder():
    root = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(root):
        pytest.skip("dataset-fashion-mnist (Debian package) not installed")
    ds, info = build_dataset("fashion-mnist", None, train=False, T=2)
    assert len(ds) == 10_000 and info.num_classes == 10
    counts = torch.bincount(torch.as_tensor(ds.labels), minlength=10)
    assert torch.equal(counts, torch.full((10,), 1000))  # the test set is balanced


def test_emnist_letters_transposed_and_shifted(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([1, 26, 3, 4, 5], np.uint8)  # letters are stored as 1..26
    for part in ("train", "test"):
        write_idx(tmp_path / f"emnist-letters-{part}-images-idx3-ubyte.gz", images, True)
        write_idx(tmp_path / f"emnist-letters-{part}-labels-idx1-ubyte.gz", labels, True)
    ds, info = build_dataset("emnist", tmp_path, train=True, T=2, split="letters")
    assert info.num_classes == 26
    for i in range(5):
        x, y = ds[i]
        assert torch.equal(x[0], torch.from_numpy(images[i].T.copy()).float() / 255)  # upright
        assert y == labels[i] - 1


def test_emnist_unknown_split(tmp_path):
    with pytest.raises(UserError, match="split 'nope'"):
        build_dataset("emnist", tmp_path, train=True, T=2, split="nope")


def write_cifar_batch(path, data: np.ndarray, labels: list[int], label_key=b"labels"):
    batch = {b"batch_label": b"test batch", label_key: labels, b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar10(root, n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        write_cifar_batch(root / stem, data, labels)
        out[stem] = (data, labels)
    return out


def test_cifar10_batches_decoded_exactly(tmp_path):
    written = make_cifar10(tmp_path)
    ds, info = build_dataset("cifar10", tmp_path, train=True, T=2, augment=False, normalize=False)
    assert len(ds) == 15 and (info.in_channels, info.input_size, info.num_classes) == (3, (32, 32), 10)
    data, labels = written["data_batch_2"]
    x, y = ds[3]  # first image of batch 2
    assert torch.equal(x, torch.from_numpy(data[0].reshape(3, 32, 32)).float() / 255)
    assert y == labels[0]
    test, _ = build_dataset("cifar10", tmp_path, train=False, T=2, augment=False)
    data, labels = written["test_batch"]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    expected = (torch.from_numpy(data[2].reshape(3, 32, 32)).double() / 255 - mean.double()) / std.double()
    assert torch.allclose(test[2][0].double(), expected, atol=1e-6)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    for stem in ("train", "test"):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        write_cifar_batch(tmp_path / stem, data, [0, 99, 50, 7], label_key=b"fine_labels")
    ds, info = build_dataset("cifar100", tmp_path, train=False, T=2, augment=False)
    assert info.num_classes == 100 and [ds[i][1] for i in range(4)] == [0, 99, 50, 7]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    make_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3: refused to load global (posix|os|nt)\.system"):
        build_dataset("cifar10", tmp_path, train=True, T=2)


def test_cifar_corrupt_and_wrong_shapes(tmp_path):
    make_cifar10(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="test_batch: corrupt or truncated pickle"):
        build_dataset("cifar10", tmp_path, train=False, T=2)
    write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 1024), np.uint8), [1, 2])
    with pytest.raises(UserError, match=r"test_batch: 'data' is uint8 of shape \(2, 1024\); expected uint8 \[N, 3072\]"):
        build_dataset("cifar10", tmp_path, train=False, T=2)
    write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [1, 2, 3])
    with pytest.raises(UserError, match="test_batch has 3 labels; expected 2"):
        build_dataset("cifar10", tmp_path, train=False, T=2)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(UserError, match="missing file .*data_batch_5.*cs.toronto.edu"):
        build_dataset("cifar10", tmp_path, train=True, T=2)


def test_idx_errors_name_file_and_expectation(tmp_path):
    make_mnist(tmp_path, gz=False)
    img = tmp_path / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte: IDX size mismatch: shape \(4, 28, 28\)"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    write_idx(img, np.zeros((4, 32, 32), np.uint8), gz=False)
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte holds uint8 images of shape .32, 32.; expected uint8 28x28"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    write_idx(img, np.zeros((3, 28, 28), np.uint8), gz=False)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte has 4 labels; expected 3"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    img.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: corrupt or truncated gzip"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    img.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="not an IDX file"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    img.unlink()
    with pytest.raises(UserError, match=r"missing file .*t10k-images-idx3-ubyte\[\.gz\]; get"):
        build_dataset("mnist", tmp_path, train=False, T=2)
    with pytest.raises(UserError, match="data root .*nowhere not found; get"):
        build_dataset("mnist", tmp_path / "nowhere", train=False, T=2)


def test_label_out_of_range(tmp_path):
    make_mnist(tmp_path, label_max=12, seed=3, n_test=40)
    with pytest.raises(UserError, match=r"labels in \[0, 1[01]\]; expected 0..9"):
        build_dataset("mnist", tmp_path, train=False, T=2)


def test_image_folder_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    written = {}
    for split in ("train", "val"):
        for cls in ("n01", "n02", "n03"):
            (tmp_path / split / cls).mkdir(parents=True)
            arr = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / split / cls / "a.png")
            written[split, cls] = arr
    ds, info = build_dataset("imagenet", tmp_path, train=False, T=2, normalize=False)
    assert (info.num_classes, info.input_size, len(ds)) == (3, (224, 224), 3)
    x, y = ds[1]
    assert y == 1 and x.shape == (3, 224, 224)
    # resize shorter side 260 → 256 (300 → 295), centre crop 224: compare with an independent resize
    from PIL import Image as I
    ref = np.asarray(I.fromarray(written["val", "n02"]).resize((256, 295), I.BILINEAR), np.float64) / 255
    top, left = (295 - 224) // 2, (256 - 224) // 2
    ref = torch.from_numpy(ref[top:top + 224, left:left + 224]).permute(2, 0, 1)
    assert (x.double() - ref).abs().mean() < 0.02
    tr, _ = build_dataset("imagenet", tmp_path, train=True, T=2)
    assert tr[0][0].shape == (3, 224, 224) and tr[2][1] == 2
    (tmp_path / "val" / "n03" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match="a.png: cannot decode image"):
        ds[2]


def test_digits_and_factory_contract():
    ds, info = build_dataset("digits", None, train=True, T=4)
    assert info == info.__class__("digits", 1, (8, 8), 10, "static", "direct", 4)
    x, y = ds[0]
    assert x.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known: digits, mnist.*n-mnist"):
        build_dataset("svhn", None, train=True, T=4)
    with pytest.raises(ValueError, match="unknown options \\['bogus'\\]"):
        build_dataset("digits", None, train=True, T=4, bogus=1)
    assert set(DATASET_NAMES) == {"digits", "mnist", "emnist", "fashion-mnist", "cifar10", "cifar100",
                                  "imagenet", "dvs-gesture", "cifar10-dvs", "n-mnist",
                                  "seq-mnist", "seq-fashion-mnist", "fashion-saccades"}


def test_to_time_major():
    x = torch.rand(3, 1, 4, 4)
    d = to_time_major(x, 5, "direct")
    assert d.shape == (5, 3, 1, 4, 4) and all(torch.equal(d[t], x) for t in range(5))
    r = to_time_major(torch.full((2000,), 0.3), 50, "rate", generator=torch.Generator().manual_seed(0))
    assert set(r.unique().tolist()) <= {0.0, 1.0} and abs(r.mean().item() - 0.3) < 0.01
    f = torch.rand(2, 6, 2, 3, 3)
    assert torch.equal(to_time_major(f, 6, "frames"), f.transpose(0, 1))
    with pytest.raises(ValueError, match="expected \\[B, T=5"):
        to_time_major(f, 5, "frames")


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, leanspike.data; heavy = [m for m in ('PIL', 'tonic', 'leanspike.data.images', "
            "'leanspike.data.event_datasets') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rate_encoding_keeps_pixels_in_unit_range(tmp_path):
    make_cifar10(tmp_path, n=2)
    ds, info = build_dataset("cifar10", tmp_path, train=False, T=3, encoding="rate")
    x, _ = ds[0]
    assert info.encoding == "rate" and 0 <= x.min() and x.max() <= 1
    with pytest.raises(ValueError, match="rate encoding"):
        build_dataset("cifar10", tmp_path, train=False, T=3, encoding="rate", normalize=True)
