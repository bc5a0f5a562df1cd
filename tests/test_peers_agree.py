"""leanspike's gradients against SpikingJelly's (float64) and snnTorch's (float32) own code.

The benchmark (bench/peers.py) times the same network in three libraries; these tests prove
that the setups compute the same gradients, so the times compare like with like — and they
check leanspike's BPTT and SLTT against independent implementations. The test set-up
(scripts/bootstrap.sh) installs both peers; elsewhere each test is skipped where its library
is missing.

- SpikingJelly BPTT (multi-step ``LIFNode``, BN per step) = leanspike ``BPTT``;
- SpikingJelly's ``SLTTLIFNode`` in its online loop (backward at every step) = leanspike ``SLTT``;
- snnTorch ``Leaky`` (subtractive reset, not decayed and detached) = leanspike ``BPTT`` with
  ``reset="soft-unleaked", detach_reset=True``: the benchmark's snnTorch setup therefore
  runs slightly different dynamics than the others, at the same cost.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanspike import BPTT, LIF, SLTT, Sigmoid
from leanspike.layers import StepBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers  # noqa: E402  (the benchmark's model builders are what is under test)

T, B, CLASSES = 3, 4, 5


def _reference(reset: str = "soft", detach_reset: bool = False, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A small VGG-like net of the benchmark's layer kinds and neuron constants."""
    torch.manual_seed(0)
    neuron = partial(LIF, decay=peers.DECAY, v_threshold=peers.V_TH, reset=reset, detach_reset=detach_reset,
                     surrogate=Sigmoid(peers.ALPHA))
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1, bias=False), StepBatchNorm2d(8), neuron(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), StepBatchNorm2d(16), neuron(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES)).to(dtype)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(T, B, 2, 8, 8, generator=gen) < 0.4).double() * 3.0  # strong enough to fire
    return x, torch.randint(0, CLASSES, (B,), generator=gen)


def _leanspike(method, reference: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    grads = method.compute_gradients(reference, x, y)
    return [grads[name] for name, _ in reference.named_parameters()]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], tolerance: float = 1e-10) -> None:
    """Equal within ``tolerance`` of each gradient's largest value."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        scale = b.abs().max()
        assert scale > 0  # every layer receives a gradient: the comparison means something
        assert (a - b).abs().max() <= tolerance * scale


def _spikingjelly(mode: str) -> tuple[nn.Sequential, nn.Module]:
    """The reference net and its SpikingJelly twin for ``mode`` (see ``peers.spikingjelly_model``), reset."""
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional

    reference = _reference()
    peer = peers.spikingjelly_model(reference, mode).double()
    functional.reset_net(peer)
    return reference, peer


def test_spikingjelly_bptt_gives_leanspikes_bptt_gradients():
    reference, peer = _spikingjelly("bptt")
    x, y = _data()
    out = peer(x)
    F.cross_entropy(out.flatten(0, 1), y.repeat(T)).backward()
    _assert_same([p.grad for p in peer.parameters()], _leanspike(BPTT(), reference, x, y))


def test_spikingjelly_sltt_loop_gives_leanspikes_sltt_gradients():
    reference, peer = _spikingjelly("sltt")
    x, y = _data()
    for t in range(T):
        (F.cross_entropy(peer(x[t]), y) / T).backward()
    got = [p.grad for p in peer.parameters()]
    _assert_same(got, _leanspike(SLTT(), reference, x, y))
    # the temporal routes SLTT drops carry gradient on this net: the agreement is not BPTT's
    assert any(not torch.allclose(a, b) for a, b in zip(got, _leanspike(BPTT(), reference, x, y)))


def test_snntorch_bptt_gives_leanspikes_bptt_with_its_reset():
    """In float32: snnTorch's spike function returns float32 whatever its input."""
    pytest.importorskip("snntorch")
    reference = _reference(reset="soft-unleaked", detach_reset=True, dtype=torch.float32)
    peer = peers.snntorch_model(reference)
    x, y = _data()
    x = x.float()
    peers.snntorch_reset(peer)
    out = torch.stack([peer(x[t]) for t in range(T)])
    F.cross_entropy(out.flatten(0, 1), y.repeat(T)).backward()
    got = [p.grad for p in peer.parameters()]
    _assert_same(got, _leanspike(BPTT(), reference, x, y), tolerance=1e-5)

    leaked = _reference(dtype=torch.float32)  # the benchmark's other setups: a different model
    assert any(not torch.allclose(a, b) for a, b in zip(got, _leanspike(BPTT(), leaked, x, y)))
