"""Temporal tasks: sequential images, simulated saccade event streams, the 1-D conv model.

Every file is written here in its real format (IDX, N-MNIST binary); values are checked
against independent computations (slicing the image by hand, a scalar per-pixel event
model, a byte-by-byte N-MNIST encoder, F.conv1d).
"""

from __future__ import annotations

import copy
import math
import struct
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leanspike import BPTT, LIF, OTTT, SLTT, SLTTK, TBPTT, TruncatedLocalBPTT
from leanspike.data import build_dataset, to_time_major
from leanspike.data.events import read_nmnist
from leanspike.data.saccades import (META, SaccadeConfig, convert_fashion_mnist, nmnist_bytes, render, simulate,
                                     write_nmnist)
from leanspike.data.sequential import image_to_sequence
from leanspike.errors import UserError
from leanspike.models.conv1d import spiking_conv1d
from leanspike.models.small import spiking_cnn, spiking_mlp


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_folder(root, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    return data


# ------------------------------------------------------------------------ sequential images
def test_rows_follow_the_image_rows(tmp_path):
    data = mnist_folder(tmp_path)
    ds, info = build_dataset("seq-mnist", tmp_path, train=True, T=28)
    images, labels = data["train"]
    assert (info.in_channels, info.input_size, info.kind, info.T) == (1, (1, 28), "frames", 28)
    x, y = ds[3]
    assert x.shape == (28, 28) and y == labels[3]
    for t in range(28):  # step t is row t, pixel for pixel
        assert torch.equal(x[t], torch.from_numpy(images[3, t]).float() / 255)
    batch = torch.stack([ds[i][0] for i in range(2)])
    assert to_time_major(batch, 28, info.encoding).shape == (28, 2, 28)


def test_strips_and_channels_layouts(tmp_path):
    data = mnist_folder(tmp_path)
    images = data["t10k"][0]
    ds, info = build_dataset("seq-mnist", tmp_path, train=False, T=7, mode="strips", width=4, layout="channels")
    assert (info.in_channels, info.input_size) == (4, (1, 28))
    x, _ = ds[1]
    assert x.shape == (7, 4, 28)
    for t in range(7):
        for i in range(4):  # channel i of step t = column 4t+i, top to bottom
            assert torch.equal(x[t, i], torch.from_numpy(images[1, :, 4 * t + i]).float() / 255)
    flat, info = build_dataset("seq-mnist", tmp_path, train=False, T=7, mode="strips", width=4)
    assert info.input_size == (1, 112) and torch.equal(flat[1][0], x.reshape(7, 112))
    rows2, _ = build_dataset("seq-mnist", tmp_path, train=False, T=14, width=2, layout="channels")
    assert torch.equal(rows2[0][0][5], torch.from_numpy(images[0, 10:12]).float() / 255)


def test_sequential_errors(tmp_path):
    mnist_folder(tmp_path)
    with pytest.raises(ValueError, match="gives T = 28 steps; got T = 8"):
        build_dataset("seq-mnist", tmp_path, train=True, T=8)
    with pytest.raises(ValueError, match="width = 5; expected an integer dividing"):
        image_to_sequence(torch.zeros(1, 1, 28, 28), width=5)
    with pytest.raises(ValueError, match="mode 'cols' unknown"):
        image_to_sequence(torch.zeros(1, 1, 28, 28), mode="cols")
    with pytest.raises(ValueError, match="unknown options"):
        build_dataset("seq-mnist", tmp_path, train=True, T=28, encoding="rate")


# ------------------------------------------------------------------------ saccade events
def test_render_pastes_and_interpolates():
    img = np.random.default_rng(0).random((2, 5, 6))
    whole = render(img, 3, 2, 12)
    manual = np.zeros((2, 12, 12))
    manual[:, 2:7, 3:9] = img
    np.testing.assert_allclose(whole, manual, atol=1e-6)
    half = render(img, 3.5, 2, 12)
    right = np.zeros((2, 12, 12))
    right[:, 2:7, 4:10] = img
    np.testing.assert_allclose(half, (manual + right) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="leaves the 12x12 sensor"):
        render(img, 7, 0, 12)


def reference_events(image: np.ndarray, cfg: SaccadeConfig) -> list[tuple[int, int, int, int]]:
    """Scalar per-pixel event model (no shared code but ``render``): (t, x, y, p) tuples."""
    times, pos = cfg.times_us(), cfg.positions()
    logs = [np.log(render(image[None].astype(np.float64), *p, cfg.sensor)[0] + cfg.eps) for p in pos]
    out = []
    for y in range(cfg.sensor):
        for x in range(cfg.sensor):
            ref = logs[0][y, x]
            for k in range(1, len(times)):
                a, b = logs[k - 1][y, x], logs[k][y, x]
                while abs(b - ref) >= cfg.threshold - 1e-6:
                    s = 1 if b > ref else -1
                    ref = ref + s * cfg.threshold
                    frac = min(max((ref - a) / (b - a), 0.0), 1.0)
                    out.append((round(times[k - 1] + frac * (times[k] - times[k - 1])), x, y, int(s > 0)))
    return sorted(out)


def square_image() -> np.ndarray:
    img = np.zeros((28, 28))
    img[10:18, 8:20] = 0.9
    img[12:14, 12:14] = 0.3
    return img


def test_saccade_events_match_scalar_reference_and_polarity():
    cfg = SaccadeConfig(steps_per_saccade=6, threshold=0.5)
    img = square_image()
    ev = simulate(img[None], cfg)[0]
    got = sorted(zip(ev["t"].tolist(), ev["x"].tolist(), ev["y"].tolist(), ev["p"].tolist()))
    ref = reference_events(img, cfg)
    assert len(got) == len(ref) > 50
    diff = [(a, b) for a, b in zip(got, ref) if a[1:] != b[1:] or abs(a[0] - b[0]) > 1]
    assert not diff  # float32 vs float64: timestamps may differ by 1 µs
    assert np.all(np.diff(ev["t"]) >= 0)
    # with a first leg 4 px to the right, a plain square wider than that changes every pixel
    # one way only: ON events fall where the brightness rose, OFF events where it fell
    cfg = SaccadeConfig(steps_per_saccade=6, threshold=0.5, leg1=(4.0, 0.0), leg2=(2.0, 4.0))
    img = square_image()
    img[12:14, 12:14] = 0.9
    ev = simulate(img[None], cfg)[0]
    first = ev[ev["t"] < cfg.saccade_ms * 1000]
    pos = cfg.positions()
    before = render(img[None], *pos[0], cfg.sensor)[0]
    after = render(img[None], *pos[cfg.steps_per_saccade], cfg.sensor)[0]
    rise = after[first["y"], first["x"]] - before[first["y"], first["x"]]
    assert np.all(rise[first["p"] == 1] > 0) and np.all(rise[first["p"] == 0] < 0)
    assert first["p"].sum() > 10 and (1 - first["p"]).sum() > 10
    # the path closes: every pixel ends where it started, so its ON and OFF counts agree
    on = np.zeros((34, 34), int)
    np.add.at(on, (ev["y"], ev["x"]), 2 * ev["p"].astype(int) - 1)
    assert not on.any()


def test_nmnist_file_round_trip(tmp_path):
    ev = simulate(square_image()[None], SaccadeConfig(steps_per_saccade=4))[0]
    path = tmp_path / "0.bin"
    write_nmnist(path, ev)
    raw = path.read_bytes()
    byhand = b"".join(bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 255, t & 255])
                      for t, x, y, p in zip(ev["t"].tolist(), ev["x"].tolist(), ev["y"].tolist(), ev["p"].tolist()))
    assert raw == byhand == nmnist_bytes(ev)
    back = read_nmnist(path)
    assert back.dtype == ev.dtype and np.array_equal(back, ev)
    with pytest.raises(ValueError, match="23"):
        nmnist_bytes(np.array([(2 ** 23, 0, 0, 1)], dtype=ev.dtype))


def test_converted_folder_reads_as_n_mnist_and_fashion_saccades(tmp_path):
    src = tmp_path / "fm"
    src.mkdir()
    data = mnist_folder(src, n_train=10, n_test=10)
    cfg = SaccadeConfig(steps_per_saccade=4)
    out = convert_fashion_mnist(tmp_path / "fs", src, n_train=10, n_test=3, config=cfg, log=lambda *_: None)
    assert (out / META).is_file() and len(list((out / "Test").rglob("*.bin"))) == 3
    convert_fashion_mnist(out, src, n_train=10, n_test=3, config=cfg, log=lambda *_: None)  # no-op
    with pytest.raises(UserError, match="other settings"):
        convert_fashion_mnist(out, src, n_train=5, n_test=3, config=cfg, log=lambda *_: None)
    n_ds, n_info = build_dataset("n-mnist", out, train=True, T=4, cache=False)
    f_ds, f_info = build_dataset("fashion-saccades", out, train=True, T=4, cache_dir=tmp_path / "cache")
    assert (f_info.name, f_info.input_size, f_info.in_channels, f_info.T) == ("fashion-saccades", (34, 34), 2, 4)
    assert len(f_ds) == len(n_ds) == 10
    images = data["train"][0]
    for i in range(10):
        label = f_ds.samples[i].label
        idx = int(f_ds.samples[i].path.stem)
        assert label == data["train"][1][idx]
        events = simulate(images[idx:idx + 1], cfg)[0]
        x, y = f_ds[i]
        assert y == label and x.shape == (4, 2, 34, 34)
        assert torch.equal(x, n_ds[i][0]) and float(x.sum()) == len(events)
        on = torch.zeros(34, 34)
        on.index_put_((torch.from_numpy(events["y"][events["p"] == 1].astype(np.int64)),
                       torch.from_numpy(events["x"][events["p"] == 1].astype(np.int64))), torch.tensor(1.0),
                      accumulate=True)
        assert torch.equal(x[:, 1].sum(0), on)
    w_ds, _ = build_dataset("fashion-saccades", out, train=False, T=6, integration="window", window_ms=50,
                            cache=False)
    assert w_ds[0][0].shape == (6, 2, 34, 34) and w_ds[0][0].max() == 1
    with pytest.raises(UserError, match="no converted data"):
        build_dataset("fashion-saccades", tmp_path / "missing", train=True, T=4)


# ------------------------------------------------------------------------ 1-D conv model
def test_conv1d_layer_is_a_1d_convolution():
    torch.manual_seed(0)
    model = spiking_conv1d(3, 10, (1, 20), widths=(4,), kernel=5, batch_norm=False)
    x = torch.randn(2, 3, 20)
    conv = model[1]
    got = conv(model[0](x))
    want = F.conv1d(x, conv.weight.squeeze(2), conv.bias, padding=2)
    torch.testing.assert_close(got.squeeze(2), want)
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="odd"):
        spiking_conv1d(1, 10, 28, kernel=4)


# ------------------------------------------------------------------------ one step per method
METHODS = {
    "bptt": lambda T: BPTT(),
    "tbptt": lambda T: TBPTT(2, update="interval"),
    "sltt": lambda T: SLTT(),
    "sltt-k-T": lambda T: SLTTK(2, scale="T", generator=torch.Generator().manual_seed(0)),
    "sltt-k-K": lambda T: SLTTK(2, scale="K", generator=torch.Generator().manual_seed(0)),
    "ttl": lambda T: TruncatedLocalBPTT(2, 1),
    "ottt": lambda T: OTTT(),
}


def tiny_task(kind: str, tmp_path):
    neuron = partial(LIF, tau=2.0)
    if kind == "saccades":
        src = tmp_path / "fm"
        src.mkdir()
        mnist_folder(src, n_train=4, n_test=1)
        out = convert_fashion_mnist(tmp_path / "fs", src, n_train=4, n_test=1,
                                    config=SaccadeConfig(steps_per_saccade=3), log=lambda *_: None)
        ds, info = build_dataset("fashion-saccades", out, train=True, T=4, cache=False)
        model = spiking_cnn(2, 10, 34, widths=(2, 4), neuron=neuron)
    else:
        mnist_folder(tmp_path, n_train=4, n_test=1)
        layout = "channels" if kind == "rows-conv1d" else "flat"
        ds, info = build_dataset("seq-mnist", tmp_path, train=True, T=7, width=4, layout=layout)
        if layout == "flat":
            model = spiking_mlp(112, 10, hidden=(8, 8), neuron=neuron)
        else:
            model = spiking_conv1d(info.in_channels, 10, info.input_size, widths=(2, 2), kernel=3, neuron=neuron)
    x = to_time_major(torch.stack([ds[i][0] for i in range(4)]), info.T, info.encoding)
    y = torch.tensor([ds[i][1] for i in range(4)])
    return model, x, y


@pytest.mark.parametrize("kind", ["rows-mlp", "rows-conv1d", "saccades"])
def test_one_train_step_of_each_method(kind, tmp_path):
    torch.manual_seed(0)
    initial, x, y = tiny_task(kind, tmp_path)
    for name, make in METHODS.items():
        model = copy.deepcopy(initial)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        res = make(x.shape[0]).train_step(model, x, y, opt)
        assert math.isfinite(res.loss) and res.predictions.shape == (4,), name
        after = dict(model.named_parameters())
        last = list(before)[-1]  # the output layer's bias always receives a gradient
        assert not torch.equal(before[last], after[last]), (kind, name)
        assert all(torch.isfinite(p).all() for p in after.values()), (kind, name)
