"""``bench/live_peak.py``: the peak of live bytes an iteration makes, and what is alive at it,
against allocations of known sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import live_peak  # noqa: E402

MIB = 1 << 20


def test_the_peak_is_the_most_bytes_alive_at_once_and_lists_them():
    kept = []

    def iteration():
        a = torch.empty(MIB, dtype=torch.uint8)  # alive at the peak, freed before the end
        kept.append(torch.empty(2 * MIB, dtype=torch.uint8))  # kept after the iteration
        c = torch.empty(4 * MIB, dtype=torch.uint8)  # the peak: a, the kept one and c
        del c, a
        d = torch.empty(3 * MIB, dtype=torch.uint8)  # 5 MiB with the kept one: no new peak
        del d

    peak, alive = live_peak.live_at_peak(iteration)
    assert 7 * MIB <= peak < 7 * MIB + 64 * 1024  # anything else the call made is small
    assert [size for size, _ in alive[:3]] == [4 * MIB, 2 * MIB, MIB]
    assert all(size < MIB for size, _ in alive[3:])
