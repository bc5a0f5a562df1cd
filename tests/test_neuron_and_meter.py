"""LIF state life cycle, surrogate formulas, input validation, and the saved-tensor meter."""

import math

import pytest
import torch
from torch import nn

from leanspike import BPTT, LIF, SLTT, SLTTK, TBPTT, MeanOutputCE
from leanspike.measure import SavedTensorMeter, time_iterations
from leanspike.surrogate import Rectangle, Sigmoid, Triangle, make_surrogate


@pytest.mark.parametrize("x,expected", [(0.0, 1.0), (0.24, 1.0), (-0.24, 1.0), (0.26, 0.0), (-0.5, 0.0)])
def test_rectangle_derivative(x, expected):
    # γ = 0.5: (1/γ)·1(|x| < γ/2) = 2 inside ±0.25
    got = Rectangle(0.5).derivative(torch.tensor(x, dtype=torch.float64))
    assert float(got) == expected * 2.0


@pytest.mark.parametrize("x", [0.0, 0.3, -0.7, 1.0, 1.5, -2.0])
def test_triangle_derivative(x):
    gamma = 1.0
    expected = max(0.0, gamma - abs(x)) / gamma**2
    assert float(Triangle(gamma).derivative(torch.tensor(x, dtype=torch.float64))) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("x", [0.0, 0.5, -1.2])
def test_sigmoid_derivative(x):
    a = 4.0
    sig = 1 / (1 + math.exp(-a * x))
    got = Sigmoid(a).derivative(torch.tensor(x, dtype=torch.float64))
    assert float(got) == pytest.approx(a * sig * (1 - sig), abs=1e-15)


def test_spike_forward_is_heaviside_and_backward_is_surrogate():
    x = torch.tensor([-0.3, 0.0, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    s = Triangle(1.0).spike(x)
    assert s.tolist() == [0.0, 1.0, 1.0, 1.0]
    s.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.7, 1.0, 0.8, 0.1], dtype=torch.float64))


def test_surrogate_width_defaults_to_threshold():
    assert make_surrogate("triangle", v_threshold=0.4) == Triangle(0.4)
    with pytest.raises(ValueError, match="unknown surrogate"):
        make_surrogate("cosine")


@pytest.mark.parametrize("reset,expected_u2", [("soft", 0.5 * (1.2 - 1.0) + 0.3), ("hard", 0.0 + 0.3),
                                               ("soft-unleaked", 0.5 * 1.2 - 1.0 + 0.3)])
def test_lif_dynamics(reset, expected_u2):
    lif = LIF(tau=2.0, reset=reset)  # λ = 0.5
    s1 = lif(torch.tensor([1.2], dtype=torch.float64))
    assert s1.item() == 1.0
    u2 = lif.carry + torch.tensor([0.3], dtype=torch.float64)
    assert u2.item() == pytest.approx(expected_u2, abs=1e-15)


def test_lif_rejects_bad_settings():
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=0.5)
    with pytest.raises(ValueError, match="decay"):
        LIF(decay=1.5)
    with pytest.raises(ValueError, match="reset"):
        LIF(reset="zero")
    with pytest.raises(ValueError, match="v_threshold"):
        LIF(v_threshold=0)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), LIF(tau=2.0), nn.Linear(8, 2))


@pytest.mark.parametrize("method", [BPTT(), TBPTT(2), SLTT(), SLTTK(1)])
def test_new_batch_never_sees_previous_state(method):
    """Training on batch A then B gives B's gradients exactly as from a fresh network."""
    net = _net()
    a, b = torch.rand(4, 5, 3) * 3, torch.rand(4, 5, 3) * 3
    y = torch.tensor([0, 1, 0, 1, 1])
    if isinstance(method, SLTTK):
        method.generator = torch.Generator().manual_seed(0)
    fresh = method.compute_gradients(net, b, y)
    method.compute_gradients(net, a, y)
    if isinstance(method, SLTTK):
        method.generator = torch.Generator().manual_seed(0)
    after = method.compute_gradients(net, b, y)
    for n in fresh:
        assert torch.equal(fresh[n], after[n])


@pytest.mark.parametrize("method,match", [
    (lambda: TBPTT(0), "k must be"), (lambda: SLTTK(0), "K must be"), (lambda: TBPTT(-1), "-1"),
])
def test_invalid_method_settings(method, match):
    with pytest.raises(ValueError, match=match):
        method()


@pytest.mark.parametrize("method,match", [(TBPTT(5), "k = 5 exceeds"), (SLTTK(5), "K = 5 exceeds")])
def test_setting_above_T(method, match):
    with pytest.raises(ValueError, match=match):
        method.compute_gradients(_net(), torch.rand(4, 2, 3), torch.tensor([0, 1]))


def test_input_without_time_axis():
    with pytest.raises(ValueError, match="no time axis"):
        BPTT().compute_gradients(_net(), torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    with pytest.raises(ValueError, match="no time axis"):
        BPTT().compute_gradients(_net(), torch.rand(5, 4, 3), torch.tensor([0, 1, 0, 1, 1]))


@pytest.mark.parametrize("method", [SLTT(MeanOutputCE()), TBPTT(2, MeanOutputCE())])
def test_mean_output_loss_only_for_bptt(method):
    with pytest.raises(ValueError, match="MeanOutputCE"):
        method.compute_gradients(_net(), torch.rand(4, 2, 3), torch.tensor([0, 1]))
    BPTT(MeanOutputCE()).compute_gradients(_net(), torch.rand(4, 2, 3), torch.tensor([0, 1]))


def test_meter_counts_each_storage_once_and_releases():
    a = torch.randn(256, requires_grad=True)  # float32: 1024 bytes per 256-vector
    with SavedTensorMeter() as meter:
        b = a.exp()           # saves its output b: 1024
        c = b.sin()           # saves its input b: same storage, not counted again
        d = b[:128].cos()     # a view of b: same storage again
        e = c.exp()           # saves e: +1024
        assert meter.current_bytes == 2048
        (d.sum() + e.sum()).backward()
    assert meter.peak_bytes == 2048
    assert meter.current_bytes == 0


def test_meter_excludes_parameters():
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with SavedTensorMeter(exclude=[lin]) as meter:
        y = lin(x)           # saves x (4·16·4 = 256 bytes) and the weight (excluded)
        y.sum().backward()
    assert meter.peak_bytes == 256


def test_meter_releases_when_graph_is_dropped():
    a = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        b = a.sin()  # saves its input a
        assert meter.current_bytes == 400
        del b
    assert meter.current_bytes == 0 and meter.peak_bytes == 400


def test_sltt_memory_is_constant_in_T_and_bptt_grows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 64), LIF(), nn.Linear(64, 64), LIF(), nn.Linear(64, 3))
    y = torch.zeros(8, dtype=torch.long)
    peaks = {}
    for name, method in (("bptt", BPTT()), ("sltt", SLTT())):
        for T in (2, 8):
            x = torch.rand(T, 8, 10)
            with SavedTensorMeter(exclude=[net, x]) as meter:
                method.compute_gradients(net, x, y)
            peaks[name, T] = meter.peak_bytes
    assert peaks["sltt", 8] == peaks["sltt", 2]
    assert peaks["bptt", 8] > 3.5 * peaks["bptt", 2]


def test_time_iterations_reports_median():
    calls = []
    timing = time_iterations(lambda: calls.append(1), warmup=2, iterations=3)
    assert len(calls) == 5 and len(timing.times_s) == 3
    assert timing.median_s == sorted(timing.times_s)[1]


def test_cpu_description_names_the_cpu_and_its_vector_instructions():
    """Results record which CPU made them (kernel picks follow its vector instructions), and a
    run's environment record carries the same two fields."""
    from leanspike import multistep
    from leanspike.experiments.logs import environment
    from leanspike.measure import cpu_description

    info = cpu_description()
    assert set(info) == {"cpu", "cpu_capability"} and all(isinstance(v, str) and v for v in info.values())
    assert info["cpu_capability"] == multistep.CPU_CAPABILITY
    env = environment(torch.device("cpu"), 1, None)
    assert env["cpu"] == info["cpu"] and env["cpu_capability"] == info["cpu_capability"]
