"""Event files written here byte by byte in their real formats (AEDAT 2.0, AEDAT 3.1, N-MNIST),
decoded, integrated into frames and cached; every value checked against what was written."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from leanspike.data import build_dataset
from leanspike.data.events import read_aedat, read_nmnist
from leanspike.data.frames import FrameSpec, count_frames, integrate, window_frames
from leanspike.errors import UserError

# ---------------------------------------------------------------- writers (independent of the readers)


def aedat31_bytes(packets: list[tuple[int, int, list[tuple[int, int, int, int, int]]]]) -> bytes:
    """packets: (eventType, eventTSOverflow, [(x, y, p, valid, ts), ...])."""
    out = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"
    for etype, overflow, events in packets:
        n = len(events)
        out += struct.pack("<hhiiiiii", etype, 1, 8, 4, overflow, n, n, sum(e[3] for e in events))
        for x, y, p, valid, ts in events:
            out += struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, ts)
    return out


def aedat2_bytes(events: list[tuple[int, int, int, int]], external: int = 0) -> bytes:
    """DVS128 AEDAT 2.0: big-endian address (p bit 0, x bits 1-7, y bits 8-14) + timestamp."""
    out = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 timestamp\r\n"
    for x, y, p, t in events:
        out += struct.pack(">II", (y << 8) | (x << 1) | p, t)
    for k in range(external):
        out += struct.pack(">II", 0x8000 | k, 10 + k)
    return out


def nmnist_bytes(events: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF]) for x, y, p, t in events)


def random_events(rng, n, W, H, t0=0, span=100_000):
    t = np.sort(rng.integers(t0, t0 + span, n))
    return [(int(rng.integers(0, W)), int(rng.integers(0, H)), int(rng.integers(0, 2)), int(tt)) for tt in t]


def ref_window(events, T, dt, H, W):
    """Loop reference for window integration."""
    out = np.zeros((T, 2, H, W), np.uint8)
    t0 = min(e[3] for e in events)
    for x, y, p, t in events:
        k = (t - t0) // dt
        if k < T:
            out[k, p, y, x] = 1
    return out


def ref_count(events, T, H, W):
    out = np.zeros((T, 2, H, W), np.float32)
    events = sorted(events, key=lambda e: e[3])
    n = len(events)
    bounds = [i * n // T for i in range(T + 1)]
    for k in range(T):
        for x, y, p, t in events[bounds[k]:bounds[k + 1]]:
            out[k, p, y, x] += 1
    return out


# ---------------------------------------------------------------- readers


def test_aedat31_polarity_packets_overflow_invalid_and_other_types(tmp_path):
    p1 = [(5, 7, 1, 1, 100), (127, 0, 0, 1, 200), (3, 3, 1, 0, 250), (0, 127, 1, 1, 2_000_000_000)]
    p2 = [(64, 65, 0, 1, 5)]
    special = [(0, 0, 0, 1, 300)]  # type 0 packet: must be skipped
    path = tmp_path / "a.aedat"
    path.write_bytes(aedat31_bytes([(1, 0, p1), (0, 0, special), (1, 1, p2)]))
    ev = read_aedat(path)
    valid = [e for e in p1 if e[3]]
    assert ev["x"].tolist() == [e[0] for e in valid] + [64]
    assert ev["y"].tolist() == [e[1] for e in valid] + [65]
    assert ev["p"].tolist() == [e[2] for e in valid] + [0]
    assert ev["t"].tolist() == [e[4] for e in valid] + [(1 << 31) | 5]


def test_aedat2_dvs128_addresses(tmp_path):
    rng = np.random.default_rng(0)
    events = random_events(rng, 300, 128, 128)
    path = tmp_path / "cifar10_cat_1.aedat"
    path.write_bytes(aedat2_bytes(events, external=3))
    ev = read_aedat(path)
    assert len(ev) == 300
    assert ev["x"].tolist() == [e[0] for e in events] and ev["y"].tolist() == [e[1] for e in events]
    assert ev["p"].tolist() == [e[2] for e in events] and ev["t"].tolist() == [e[3] for e in events]


def test_nmnist_40_bit_events(tmp_path):
    events = [(0, 0, 0, 0), (33, 12, 1, (1 << 23) - 1), (17, 33, 1, 65_536), (2, 5, 0, 300_000)]
    path = tmp_path / "00001.bin"
    path.write_bytes(nmnist_bytes(events))
    ev = read_nmnist(path)
    assert [tuple(int(v) for v in (e["x"], e["y"], e["p"], e["t"])) for e in ev] == events


def test_reader_errors_name_the_file(tmp_path):
    good = aedat31_bytes([(1, 0, [(1, 2, 1, 1, 10)] * 4)])
    bad = tmp_path / "trunc.aedat"
    bad.write_bytes(good[:-5])
    with pytest.raises(UserError, match=r"trunc.aedat: truncated AEDAT 3.1 packet at byte \d+ \(expected 32 bytes"):
        read_aedat(bad)
    bad.write_bytes(good + b"\x01\x00\x02")
    with pytest.raises(UserError, match="trunc.aedat: truncated AEDAT 3.1 packet header"):
        read_aedat(bad)
    header, body = good.split(b"#!END-HEADER\r\n")
    odd = bytearray(body[:28])  # a polarity packet whose events are 10 bytes: not whole 4-byte words
    odd[4:8] = struct.pack("<i", 10)
    bad.write_bytes(header + b"#!END-HEADER\r\n" + bytes(odd) + b"\x00" * 40)
    with pytest.raises(UserError, match=r"trunc.aedat: polarity packet at byte \d+ has eventSize 10"):
        read_aedat(bad)
    bad.write_bytes(b"#!AER-DAT2.0\r\n" + b"\x00" * 13)
    with pytest.raises(UserError, match="trunc.aedat: AEDAT 2.0 body of 13 bytes"):
        read_aedat(bad)
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(UserError, match="trunc.aedat: no '#!AER-DAT<version>'"):
        read_aedat(bad)
    bad.write_bytes(b"#!AER-DAT4.0\r\n")
    with pytest.raises(UserError, match="AEDAT version '4.0' not supported"):
        read_aedat(bad)
    nm = tmp_path / "x.bin"
    nm.write_bytes(b"\x00" * 12)
    with pytest.raises(UserError, match="x.bin: 12 bytes is not a whole number of 5-byte"):
        read_nmnist(nm)


# ---------------------------------------------------------------- integration


def _structured(events):
    from leanspike.data.events import make_events
    a = np.array(events, np.int64).reshape(-1, 4)
    return make_events(a[:, 3], a[:, 0], a[:, 1], a[:, 2])


def test_window_and_count_integration_match_loops():
    rng = np.random.default_rng(1)
    events = random_events(rng, 500, 20, 16, t0=1_000_000, span=50_000)
    rng.shuffle(events)  # readers may deliver out of order
    ev = _structured(events)
    assert np.array_equal(window_frames(ev, 7, 5_000, 16, 20), ref_window(events, 7, 5_000, 16, 20))
    assert np.array_equal(count_frames(ev, 6, 16, 20), ref_count(events, 6, 16, 20))
    counts = count_frames(ev, 6, 16, 20).sum(axis=(1, 2, 3))
    assert counts.sum() == 500 and counts.max() - counts.min() <= 1  # equal shares
    assert window_frames(ev[:0], 3, 10, 4, 4).shape == (3, 2, 4, 4)
    with pytest.raises(UserError, match="expected a 10x16 sensor"):
        integrate(ev, FrameSpec("count", 4), (16, 10), source="f.aedat")


def test_resized_frames():
    rng = np.random.default_rng(2)
    events = random_events(rng, 4000, 128, 128)
    ev = _structured(events)
    counts = integrate(ev, FrameSpec("count", 10, size=(48, 48)), (128, 128))
    assert counts.shape == (10, 2, 48, 48) and counts.dtype == np.float32
    assert abs(counts.sum() * (128 * 128) / (48 * 48) - 4000) / 4000 < 0.02  # antialiased: mass kept
    binary = integrate(ev, FrameSpec("window", 5, window_us=20_000, size=(32, 32)), (128, 128))
    full = ref_window(events, 5, 20_000, 128, 128)
    assert np.array_equal(binary, full.reshape(5, 2, 32, 4, 32, 4).max(axis=(3, 5)))


# ---------------------------------------------------------------- datasets


def make_gesture(root: Path, rng) -> dict:
    """Two trials, each with three labelled gestures; one trial per split."""
    truth = {}
    for trial, split in (("user01_fluorescent", "train"), ("user24_led", "test")):
        all_events, rows = [], []
        for k, cls in enumerate((3, 11, 1)):
            start = 1_000_000 + k * 400_000
            seg = random_events(rng, 200, 128, 128, t0=start, span=300_000)
            all_events += seg
            rows.append((cls, start, start + 300_000))
            truth[trial, k] = (cls - 1, seg)
        all_events += random_events(rng, 50, 128, 128, t0=0, span=900_000)  # outside any gesture
        all_events.sort(key=lambda e: e[3])
        half = len(all_events) // 2
        packets = [(1, 0, [(x, y, p, 1, t) for x, y, p, t in chunk])
                   for chunk in (all_events[:half], all_events[half:])]
        (root / f"{trial}.aedat").write_bytes(aedat31_bytes(packets))
        (root / f"{trial}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
        (root / f"trials_to_{split}.txt").write_text(f"{trial}.aedat\n\n")
    return truth


def test_dvs_gesture_window_and_count_frames(tmp_path):
    rng = np.random.default_rng(3)
    truth = make_gesture(tmp_path, rng)
    cache = tmp_path / "cache"
    ds, info = build_dataset("dvs-gesture", tmp_path, train=True, T=60, integration="window", window_ms=20,
                             cache_dir=cache)
    assert (len(ds), info.in_channels, info.input_size, info.num_classes, info.kind) == (3, 2, (128, 128), 11, "frames")
    for k in range(3):
        x, y = ds[k]
        label, seg = truth["user01_fluorescent", k]
        assert y == label and x.shape == (60, 2, 128, 128) and x.dtype == torch.float32
        assert np.array_equal(x.numpy(), ref_window(seg, 60, 20_000, 128, 128))
    test, _ = build_dataset("dvs-gesture", tmp_path, train=False, T=20, cache_dir=cache)
    x, y = test[1]
    label, seg = truth["user24_led", 1]
    assert y == label and np.array_equal(x.numpy(), ref_count(seg, 20, 128, 128))


def test_cache_reused_keyed_by_every_parameter_and_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    make_gesture(tmp_path, rng)
    cache = tmp_path / "cache"
    ds, _ = build_dataset("dvs-gesture", tmp_path, train=True, T=10, integration="window", window_ms=20,
                          cache_dir=cache)
    first = ds[0][0]
    files = sorted((cache / "dvs-gesture").iterdir())
    assert len(files) == 3  # the whole trial was integrated at once
    assert not [f for f in files if f.suffix != ".npz"]
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            assert set(z.files) == {"packed", "shape"}
    import leanspike.data.event_datasets as m

    def boom(path):
        raise AssertionError("cache miss")

    ds.reader = boom  # served from cache now
    assert torch.equal(ds[0][0], first) and ds[2][0].shape == (10, 2, 128, 128)
    for change in ({"window_ms": 25}, {"size": 64}):
        other, _ = build_dataset("dvs-gesture", tmp_path, train=True, T=10, integration="window",
                                 cache_dir=cache, **{"window_ms": 20, **change})
        assert other[0][0].shape[-1] == change.get("size", 128)
    other, _ = build_dataset("dvs-gesture", tmp_path, train=True, T=11, integration="window", window_ms=20,
                             cache_dir=cache)
    assert other[0][0].shape[0] == 11
    assert len(list((cache / "dvs-gesture").iterdir())) == 4 * 3  # new keys, nothing overwritten
    # a changed source file (size/mtime) invalidates its entries
    trial = tmp_path / "user01_fluorescent.aedat"
    trial.write_bytes(trial.read_bytes() + aedat31_bytes([(1, 0, [(1, 1, 1, 1, 1_000_001)])])[
        len(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"):])
    again, _ = build_dataset("dvs-gesture", tmp_path, train=True, T=10, integration="window", window_ms=20,
                             cache_dir=cache)
    assert again[0][0][0, 1, 1, 1] == 1 and first[0, 1, 1, 1] == 0
    assert m.load_frames(files[0]) is not None


def test_corrupt_event_file_leaves_no_cache(tmp_path):
    rng = np.random.default_rng(5)
    make_gesture(tmp_path, rng)
    trial = tmp_path / "user01_fluorescent.aedat"
    trial.write_bytes(trial.read_bytes()[:-3])
    cache = tmp_path / "cache"
    ds, _ = build_dataset("dvs-gesture", tmp_path, train=True, T=10, cache_dir=cache)
    with pytest.raises(UserError, match="user01_fluorescent.aedat: truncated AEDAT 3.1 packet"):
        ds[0]
    assert not cache.exists() or not any(cache.rglob("*"))


def test_dvs_gesture_layout_errors(tmp_path):
    rng = np.random.default_rng(6)
    make_gesture(tmp_path, rng)
    (tmp_path / "user24_led_labels.csv").write_text("cls,start,end\n1,2,3\n")
    with pytest.raises(UserError, match="user24_led_labels.csv: expected header 'class,startTime_usec,endTime_usec'"):
        build_dataset("dvs-gesture", tmp_path, train=False, T=4)
    (tmp_path / "user24_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,5,9\n")
    with pytest.raises(UserError, match=r"user24_led_labels.csv:2: class 12 .*expected class 1..11"):
        build_dataset("dvs-gesture", tmp_path, train=False, T=4)
    (tmp_path / "user24_led_labels.csv").unlink()
    with pytest.raises(UserError, match="missing file .*user24_led_labels.csv; get DvsGesture"):
        build_dataset("dvs-gesture", tmp_path, train=False, T=4)
    (tmp_path / "trials_to_train.txt").unlink()
    with pytest.raises(UserError, match="missing file .*trials_to_train.txt; get DvsGesture.*docs/datasets.md"):
        build_dataset("dvs-gesture", tmp_path, train=True, T=4)
    with pytest.raises(UserError, match="no data root given; get DvsGesture"):
        build_dataset("dvs-gesture", None, train=True, T=4)


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_cifar10_dvs_split_and_48x48_counts(tmp_path):
    rng = np.random.default_rng(7)
    written = {}
    for cls in CLASSES:
        (tmp_path / cls).mkdir()
        for i in range(10):  # names 0..9 sort naturally: 9 before 10 would break a plain sort
            events = random_events(rng, 40, 128, 128)
            (tmp_path / cls / f"cifar10_{cls}_{i * 3}.aedat").write_bytes(aedat2_bytes(events))
            written[cls, i * 3] = events
    tr, info = build_dataset("cifar10-dvs", tmp_path, train=True, T=10, size=48, cache=False)
    te, _ = build_dataset("cifar10-dvs", tmp_path, train=False, T=10, size=48, cache=False)
    assert (len(tr), len(te), info.input_size, info.num_classes) == (90, 10, (48, 48), 10)
    assert [s.path.name for s in te.samples[:1]] == ["cifar10_airplane_27.aedat"]  # last by number
    assert [s.label for s in te.samples] == list(range(10))
    assert [s.path.name for s in tr.samples[:9]][-2:] == ["cifar10_airplane_21.aedat", "cifar10_airplane_24.aedat"]
    x, y = te[3]
    assert y == 3 and x.shape == (10, 2, 48, 48)
    ref = torch.nn.functional.interpolate(torch.from_numpy(ref_count(written["cat", 27], 10, 128, 128)),
                                          size=(48, 48), mode="bilinear", antialias=True)
    assert torch.allclose(x, ref, atol=1e-5)
    # augmentation (flip + roll) is on by default for training only
    assert tr.transform is not None and te.transform is None
    (tmp_path / "ship" / "cifar10_ship_0.aedat").unlink()
    import shutil
    shutil.rmtree(tmp_path / "truck")
    with pytest.raises(UserError, match="missing class folder .*truck; get CIFAR10-DVS"):
        build_dataset("cifar10-dvs", tmp_path, train=True, T=10)


def test_nmnist_dataset(tmp_path):
    rng = np.random.default_rng(8)
    written = {}
    for split in ("Train", "Test"):
        for d in range(10):
            (tmp_path / split / str(d)).mkdir(parents=True)
            events = random_events(rng, 30, 34, 34, span=300_000)
            (tmp_path / split / str(d) / "00002.bin").write_bytes(nmnist_bytes(events))
            written[split, d] = events
    ds, info = build_dataset("n-mnist", tmp_path, train=False, T=5, integration="window", window_ms=60,
                             cache_dir=tmp_path / "c")
    assert (len(ds), info.input_size, info.in_channels) == (10, (34, 34), 2)
    x, y = ds[7]
    assert y == 7 and np.array_equal(x.numpy(), ref_window(written["Test", 7], 5, 60_000, 34, 34))
    (tmp_path / "Train" / "4" / "00002.bin").write_bytes(b"\x00" * 7)
    tr, _ = build_dataset("n-mnist", tmp_path, train=True, T=5, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="00002.bin: 7 bytes is not a whole number of 5-byte"):
        tr[4]
    assert len(list((tmp_path / "c" / "n-mnist").iterdir())) == 1  # only the test sample read; no partial file
    with pytest.raises(ValueError, match="window_ms applies to integration='window' only"):
        build_dataset("n-mnist", tmp_path, train=True, T=5, window_ms=3)
    with pytest.raises(UserError, match="window integration needs window_ms > 0"):
        build_dataset("n-mnist", tmp_path, train=True, T=5, integration="window")


def test_failed_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from leanspike.data import cache as cache_mod

    target = tmp_path / "c" / "x.npz"

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cache_mod.save_frames(target, np.zeros((2, 2, 4, 4), np.float32), binary=False)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.undo()
    frames = (np.random.default_rng(0).random((3, 2, 5, 7)) < 0.3).astype(np.uint8)
    cache_mod.save_frames(target, frames, binary=True)
    assert np.array_equal(cache_mod.load_frames(target), frames)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["x.npz"]
