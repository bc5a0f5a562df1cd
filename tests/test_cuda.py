"""The CUDA path: every training method gives on a GPU the float64 gradients it gives on the CPU.

The CPU gradients are proven against independent references in the other test files
(unrolled networks, the papers' equations), so equality here carries those proofs to
CUDA, where PyTorch's kernels (cuDNN convolutions, batch norm) and leanspike's CPU-only
fast paths (NNPACK, Winograd, pooling) differ. Skipped on machines without a CUDA device.
"""

import copy
import math

import pytest
import torch

from leanspike import BPTT, OTTT, SLTT, SLTTK, TBPTT, TruncatedLocalBPTT
from leanspike.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

T, BATCH = 4, 3

#: model name -> (in_channels, input_size, num_classes, options): narrow widths, dropout off
#: (its masks come from each device's own generator)
MODELS = {
    "vgg11": (2, 16, 10, {"width": 8, "dropout": 0.0}),
    "vgg11_ws": (2, 16, 10, {"width": 8, "dropout": 0.0}),
    "resnet18": (3, 16, 10, {"width": 8}),
    "nf_resnet34": (3, 16, 10, {"width": 8}),
    "lenet1": (1, 28, 47, {}),
    "alexnet": (3, 32, 10, {"dropout": 0.0}),
}

METHODS = {
    "bptt": lambda: BPTT(),
    "tbptt": lambda: TBPTT(k=2),
    "sltt": lambda: SLTT(),
    "sltt-k": lambda: SLTTK(K=2, generator=torch.Generator().manual_seed(3)),
    "ottt": lambda: OTTT(),
    "ttl": lambda: TruncatedLocalBPTT(k=2, n=2, seed=5),
}


def _gradients(model, method, x, y):
    return {n: g.cpu() for n, g in method.compute_gradients(model, x, y).items()}


@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("model_name", MODELS)
def test_cuda_gradients_equal_cpu(model_name, method_name):
    in_channels, size, classes, options = MODELS[model_name]
    torch.manual_seed(0)
    cpu_model = build_model(model_name, in_channels=in_channels, num_classes=classes, input_size=size,
                            **options).double()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    x = (torch.rand(T, BATCH, in_channels, size, size, dtype=torch.float64) < 0.4).double() * 2.0
    y = torch.randint(0, classes, (BATCH,))
    cpu = _gradients(cpu_model.train(), METHODS[method_name](), x, y)
    gpu = _gradients(cuda_model.train(), METHODS[method_name](), x.cuda(), y.cuda())
    assert cpu.keys() == gpu.keys()
    assert any(g.abs().max() > 0 for g in cpu.values()), "no gradient reached the parameters"
    # tolerance from the largest gradient of the model: a conv bias followed by batch norm has
    # gradient 0 in exact arithmetic, so its own values are rounding noise on both devices
    scale = max(g.abs().max().item() for g in cpu.values())
    for name, g in cpu.items():
        torch.testing.assert_close(gpu[name], g, atol=1e-10 * scale, rtol=1e-9, msg=lambda m: f"{name}: {m}")
    # and the optimizer step runs on the device
    opt = torch.optim.SGD(cuda_model.parameters(), lr=0.01, momentum=0.9)
    result = METHODS[method_name]().train_step(cuda_model, x.cuda(), y.cuda(), opt)
    assert math.isfinite(result.loss)
