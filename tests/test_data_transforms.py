"""Transforms in plain torch, checked against direct index arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanspike.data import transforms as tf


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8) + 1
    padded = F.pad(x, (4, 4, 4, 4))
    seen = set()
    for seed in range(40):
        y = tf.RandomCrop(8, padding=4, generator=gen(seed))(x)
        assert y.shape == x.shape
        hits = [(i, j) for i in range(9) for j in range(9) if torch.equal(padded[:, i:i + 8, j:j + 8], y)]
        assert hits
        seen.add(hits[0])
    assert len(seen) > 10  # offsets vary


def test_flip_both_outcomes_and_frames_flip_together():
    x = torch.rand(4, 2, 5, 6)
    outs = {tuple(tf.RandomHorizontalFlip(generator=gen(s))(x).flatten()[:3].tolist()) for s in range(20)}
    assert len(outs) == 2
    y = tf.RandomHorizontalFlip(p=1.0)(x)
    assert torch.equal(y[..., 0], x[..., -1]) and torch.equal(y[2], x[2].flip(-1))


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(3, 32, 32)
    for seed in range(20):
        y = tf.Cutout(16, generator=gen(seed))(x)
        zero = (y == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert zero.sum() == len(rows) * len(cols)  # a rectangle
        assert (y[:, ~zero] == 1).all()
    assert torch.equal(x, torch.ones(3, 32, 32))  # input untouched


def test_normalize_per_channel():
    x = torch.rand(3, 4, 4, dtype=torch.float32)
    y = tf.Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(x)
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)]):
        assert torch.allclose(y[c], (x[c] - m) / s)


def test_resize_centre_crop_and_random_resized_crop_shapes():
    x = torch.rand(3, 300, 400)
    r = tf.Resize(256)(x)
    assert r.shape == (3, 256, 341)
    c = tf.CenterCrop(224)(r)
    assert c.shape == (3, 224, 224) and torch.equal(c, r[:, 16:240, 58:282])
    const = torch.full((3, 120, 90), 0.7)
    for s in range(5):
        out = tf.RandomResizedCrop(224, generator=gen(s))(const)
        assert out.shape == (3, 224, 224) and torch.allclose(out, torch.full_like(out, 0.7), atol=1e-5)


def test_random_roll_is_a_circular_shift_within_5():
    x = torch.arange(2 * 2 * 12 * 12, dtype=torch.float32).view(2, 2, 12, 12)
    shifts = set()
    for s in range(30):
        y = tf.RandomRoll(5, generator=gen(s))(x)
        match = [(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6)
                 if torch.equal(torch.roll(x, (dy, dx), (-2, -1)), y)]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 10


def test_resize_frames_to_48_keeps_mass_of_constant_frames():
    x = torch.full((3, 2, 128, 128), 2.0)
    y = tf.ResizeFrames(48)(x)
    assert y.shape == (3, 2, 48, 48) and torch.allclose(y, torch.full_like(y, 2.0))


def test_direct_and_rate_encoding():
    x = torch.tensor([[0.0, 0.25, 1.0]])
    d = tf.direct_encode(x, 4)
    assert d.shape == (4, 1, 3) and torch.equal(d[3], x)
    r = tf.rate_encode(x.expand(5000, 3), 8, generator=gen(1))
    rates = r.mean(dim=(0, 1))
    assert rates[0] == 0 and rates[2] == 1 and abs(rates[1].item() - 0.25) < 0.01
