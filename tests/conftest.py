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
