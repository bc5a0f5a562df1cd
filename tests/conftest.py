import pytest
import torch

# Test tensors are small: one thread avoids OpenMP spin-waiting, which makes two threads
# many times slower whenever another process shares the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_steps_layer_by_layer():
    """Test nets are tiny, so the engine would run their one-step intervals step by step
    (``multistep.ONE_STEP_MIN_VALUES``): take the layer-by-layer path for them too, so that the
    tests prove it. ``test_multistep`` checks the rule itself at its real value. (Not through
    ``monkeypatch``: tests call its ``undo``.)"""
    from leanspike import multistep

    real = multistep.ONE_STEP_MIN_VALUES
    multistep.ONE_STEP_MIN_VALUES = 0
    yield real
    multistep.ONE_STEP_MIN_VALUES = real


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
