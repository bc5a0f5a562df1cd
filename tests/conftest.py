import pytest
import torch

# Test tensors are small: one thread avoids OpenMP spin-waiting, which makes two threads
# many times slower whenever another process shares the cores.
torch.set_num_threads(1)


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


def float32_and_float64_gradients(method, inputs, targets):
    """``method``'s gradients on a net whose second convolution (128 → 128 channels, 3×3) takes
    the float32 kernels under test, in float32 and, from the same weights, in float64
    (PyTorch's own kernels). No neuron fires after that convolution, so rounding cannot flip a
    spike downstream of it. ``inputs``: ``[T, B, 2, H, W]`` float32."""
    from torch import nn

    from leanspike import LIF
    from leanspike.layers import StepBatchNorm2d

    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(2, 128, 3, padding=1, bias=False), StepBatchNorm2d(128), LIF(),
                             nn.Conv2d(128, 128, 3, padding=1, bias=False), StepBatchNorm2d(128),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 5))

    model = net()
    model64 = net().double()
    model64.load_state_dict(model.state_dict())
    return method.compute_gradients(model, inputs, targets), method.compute_gradients(model64, inputs.double(), targets)


def assert_gradients_close(got: dict, want: dict, tolerance: float) -> None:
    """Same parameters, each gradient nonzero and within ``tolerance`` of its largest value."""
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max()
        assert scale > 0, name
        assert (got[name].double() - want[name]).abs().max() <= tolerance * scale, name
