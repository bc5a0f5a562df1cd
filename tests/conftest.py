import pytest
import torch

# Test tensors are small: one thread avoids OpenMP spin-waiting, which makes two threads
# many times slower whenever another process shares the cores.
torch.set_num_threads(1)


#: the rules of ``leanspike.multistep`` that keep tiny nets, or this machine, off some of its
#: paths, and the values the tests run with: the size rules lifted (0: every rule passes), and
#: NNPACK and F(2×2, 3×3) taken wherever they apply, whatever this CPU's vector instructions, so
#: that every kernel is proven on every machine
LIFTED_RULES = {"ONE_STEP_MIN_VALUES": 0, "KERNEL_MIN_CHANNELS": 0, "SHALLOW_MIN_OUT": 0,
                "USE_NNPACK": torch._nnpack_available(), "WINOGRAD_MAX_BATCH": None}


@pytest.fixture(autouse=True)
def real_size_rules():
    """Test nets are tiny, so the engine would run their one-step intervals step by step and
    their convolutions through oneDNN alone (``multistep``'s size rules), and on an AVX-512 CPU
    it takes no NNPACK kernel: the tests lift those rules so that they prove the layer-by-layer
    path and every kernel on tiny nets. Yields the real values, for the tests of the rules
    themselves. (Not through ``monkeypatch``: tests call its ``undo``.)"""
    from leanspike import multistep

    real = {name: getattr(multistep, name) for name in LIFTED_RULES}
    for name, value in LIFTED_RULES.items():
        setattr(multistep, name, value)
    yield real
    for name, value in real.items():
        setattr(multistep, name, value)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def float64_conv_reference(conv, x, grad):
    """``conv``'s output and gradients (input, weight, bias) for ``x`` and the output gradient
    ``grad``, computed in float64 with PyTorch's own convolution: the reference for float32 kernels."""
    ref_conv = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                          bias=conv.bias is not None).double()
    ref_conv.load_state_dict(conv.state_dict())
    xd = x.detach().double().requires_grad_(True)
    out = ref_conv(xd)
    params = [xd, ref_conv.weight] + ([ref_conv.bias] if conv.bias is not None else [])
    return out, torch.autograd.grad(out, params, grad.double())


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Replace ``module.<name>`` by a wrapper that records each call (one entry per call)."""
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def conv_under_test_net(channels: int):
    """conv → per-step BN → LIF → the ``channels`` → ``channels`` 3×3 conv under test → BN → pool
    → linear: no neuron follows the conv under test, so float32 rounding in it cannot flip a spike."""
    from torch import nn

    from leanspike import LIF
    from leanspike.layers import StepBatchNorm2d

    return nn.Sequential(nn.Conv2d(2, channels, 3, padding=1, bias=False), StepBatchNorm2d(channels), LIF(),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False), StepBatchNorm2d(channels),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5))


def assert_float32_gradients_match_float64(method, channels: int, x, y, rtol: float) -> None:
    """``method``'s gradients of :func:`conv_under_test_net` in float32 are those of the same
    weights in float64 (PyTorch's own kernels) within ``rtol`` of each tensor's largest value."""
    model = conv_under_test_net(channels)
    model64 = conv_under_test_net(channels).double()
    model64.load_state_dict(model.state_dict())
    got = method.compute_gradients(model, x, y)
    want = method.compute_gradients(model64, x.double(), y)
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max()
        assert scale > 0, name
        assert (got[name].double() - want[name]).abs().max() <= rtol * scale, name
