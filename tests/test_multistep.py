"""The layer-by-layer (multi-step) engine path against the step-by-step one, and what it saves.

Both paths run the same methods on the same network with the same random draws; the
multi-step path must give the same losses, gradients and batch-norm statistics (float64,
up to rounding). The saved-bytes test spells out what one step keeps for backward.
"""

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from leanspike import BPTT, LIF, SLTT, SLTTK, TBPTT, OTTT, Sigmoid
from leanspike import engine as engine_module
from leanspike.engine import Engine, Schedule, infer
from leanspike.layers import SequenceDropout, StepBatchNorm2d
from leanspike.measure import SavedTensorMeter
from leanspike.methods.ottt import online_traces
from leanspike.multistep import supports_sequence

from conftest import float64_conv_reference

TOL = dict(atol=1e-10, rtol=1e-10)


def make_net(seed=0, dropout=0.3, norm=StepBatchNorm2d):
    torch.manual_seed(seed)
    lif = lambda: LIF(decay=0.5, surrogate=Sigmoid(4.0))  # noqa: E731
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm(4), lif(), SequenceDropout(dropout),
                        nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1), norm(6), lif(),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    with torch.no_grad():
        net[0].weight.mul_(2.0)
        net[5].weight.mul_(2.0)
    return net


def data(T=4, B=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, 2, 8, 8, generator=g) < 0.4).double(), torch.randint(0, 3, (B,), generator=g)


def _run(method_factory, sequence, monkeypatch, norm=StepBatchNorm2d):
    net = make_net(norm=norm).double()
    x, y = data()
    if not sequence:
        monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
    torch.manual_seed(7)  # the dropout masks
    grads = method_factory().compute_gradients(net, x, y)
    monkeypatch.undo()
    stats = [b.detach().clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d) for b in m.buffers()]
    return grads, stats


@pytest.mark.parametrize("factory", [BPTT, lambda: TBPTT(3), SLTT, lambda: SLTT(steps_per_backward=3),
                                     lambda: SLTTK(2, generator=torch.Generator().manual_seed(3))],
                         ids=["bptt", "tbptt3", "sltt", "sltt-3-per-backward", "sltt-k2"])
@pytest.mark.parametrize("norm", [StepBatchNorm2d, nn.BatchNorm2d], ids=["step-bn", "torch-bn"])
def test_layer_by_layer_equals_step_by_step(float64, factory, norm, monkeypatch):
    """Also with PyTorch's own BatchNorm2d, which a model calls once per step: each step has its
    own statistics on both paths (every norm update counted: 2 per step and layer)."""
    g_seq, s_seq = _run(factory, True, monkeypatch, norm)
    g_step, s_step = _run(factory, False, monkeypatch, norm)
    assert len(s_seq) == 6 and int(s_seq[2]) > 0
    assert sum(int(g.abs().sum() > 0) for g in g_seq.values()) == len(g_seq)
    for name in g_seq:
        torch.testing.assert_close(g_seq[name], g_step[name], **TOL, msg=lambda m: f"{name}: {m}")
    for a, b in zip(s_seq, s_step):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("norm_options", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False)],
                         ids=["cumulative-average", "not-affine", "no-running-stats"])
@pytest.mark.parametrize("factory", [BPTT, SLTT, lambda: TBPTT(2)], ids=["bptt", "sltt", "tbptt2"])
def test_torch_batch_norm_1d_layer_by_layer_equals_step_by_step(float64, factory, norm_options, monkeypatch):
    """An MLP with ``nn.BatchNorm1d`` (the options that change its statistics or parameters):
    the same gradients and running statistics on both paths."""
    results = []
    for sequence in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, **norm_options), LIF(decay=0.5, surrogate=Sigmoid(4.0)),
                            nn.Linear(8, 8), nn.BatchNorm1d(8, **norm_options), LIF(decay=0.5, surrogate=Sigmoid(4.0)),
                            nn.Linear(8, 3)).double()
        with torch.no_grad():
            net[0].weight.mul_(3.0)
            net[3].weight.mul_(3.0)
        assert supports_sequence(net)
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(5, 4, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
        if not sequence:
            monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
        grads = factory().compute_gradients(net, x, y)
        monkeypatch.undo()
        buffers = [b.detach().clone() for m in net.modules() if isinstance(m, nn.BatchNorm1d) for b in m.buffers()]
        results.append((grads, buffers))
    (g_seq, b_seq), (g_step, b_step) = results
    assert g_seq.keys() == g_step.keys() and all(g.abs().sum() > 0 for g in g_seq.values())
    for name in g_seq:
        torch.testing.assert_close(g_seq[name], g_step[name], **TOL, msg=lambda m: f"{name}: {m}")
    assert len(b_seq) == len(b_step) == (0 if "track_running_stats" in norm_options else 6)
    for a, b in zip(b_seq, b_step):
        torch.testing.assert_close(a, b, **TOL)


def test_train_step_results_match(float64, monkeypatch):
    results = []
    for sequence in (True, False):
        net = make_net().double()
        x, y = data(T=6)
        if not sequence:
            monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
        torch.manual_seed(7)
        method = SLTTK(2, generator=torch.Generator().manual_seed(0))
        r = method.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        results.append((r, [p.detach().clone() for p in net.parameters()]))
        monkeypatch.undo()
    (a, pa), (b, pb) = results
    assert (a.backward_passes, a.optimizer_steps) == (b.backward_passes, b.optimizer_steps) == (2, 1)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    torch.testing.assert_close(a.mean_output, b.mean_output, **TOL)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, **TOL)


@pytest.mark.parametrize("part_values", [1 << 17, 1280, 1], ids=["whole", "parts-of-2-steps", "one-step-parts"])
def test_inference_matches_step_by_step(float64, part_values, monkeypatch):
    import leanspike.multistep as ms

    monkeypatch.setattr(ms, "NO_GRAD_PART_VALUES", part_values)  # a sample's input: 128 values
    net = make_net().double().eval()
    x, _ = data(T=11)
    assert ms.part_steps(x, graph=False) == {1 << 17: 11, 1280: 2, 1: 1}[part_values]
    got = infer(net, x)
    want = sum(net(x[t]) for t in range(11)) / 11
    torch.testing.assert_close(got, want, **TOL)


def test_inference_of_an_empty_batch_and_of_no_steps(float64):
    net = make_net().double().eval()
    assert infer(net, torch.zeros(4, 0, 2, 8, 8)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"inputs shaped \(0, 3, 2, 8, 8\): expected \[T, B, ...\] with T >= 1"):
        infer(net, torch.zeros(0, 3, 2, 8, 8))


def test_inference_runs_under_inference_mode(float64):
    """``infer`` inside the caller's ``torch.inference_mode()`` (whose tensors have no version
    counter for the packed-bits marks): the values it gives under ``no_grad``."""
    net = make_net().double().eval()
    x, _ = data(T=5)
    want = infer(net, x)
    with torch.inference_mode():
        got = infer(net, x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_skipped_steps_run_as_one_chunk():
    schedule = Schedule([(t, t + 1) for t in range(6)], graph_intervals={2, 3})
    assert Engine._chunks(schedule, True) == [[0, 1], [2], [3], [4, 5]]
    assert Engine._chunks(schedule, False) == [[i] for i in range(6)]
    long = Schedule([(t, t + 1) for t in range(20)], graph_intervals={0})
    assert Engine._chunks(long, True) == [[0], list(range(1, 20))]
    assert Engine._chunks(long, True, max_steps=8) == [[0], list(range(1, 9)), list(range(9, 17)), [17, 18, 19]]
    per_interval = Schedule([(t, t + 1) for t in range(4)], graph_intervals={1}, update_per_interval=True)
    assert Engine._chunks(per_interval, True) == [[0], [1], [2], [3]]


def test_which_models_run_layer_by_layer():
    from leanspike.models.registry import build_model

    assert supports_sequence(build_model("vgg11", in_channels=2, num_classes=10, input_size=16))
    net = make_net()
    assert supports_sequence(net)
    with online_traces(net):  # OTTT patches forward on the instance
        assert not supports_sequence(net)
    assert supports_sequence(net)
    handle = net[5].register_forward_hook(lambda *a: None)
    assert not supports_sequence(net)
    handle.remove()

    class Residual(nn.Module):
        def forward(self, x):
            return x + 1

    assert not supports_sequence(nn.Sequential(nn.Linear(2, 2), Residual()))
    shared = LIF()
    assert not supports_sequence(nn.Sequential(shared, nn.Linear(2, 2), shared))
    # ... also when the second use is inside a nested Sequential (a norm or neuron shared across
    # levels would see its steps in another order layer by layer), or in another block of the engine
    norm = nn.BatchNorm2d(2)
    assert not supports_sequence(nn.Sequential(nn.Conv2d(2, 2, 1), norm, LIF(),
                                               nn.Sequential(nn.Conv2d(2, 2, 1), norm, LIF())))
    first, second = nn.Sequential(nn.Linear(2, 2), shared), nn.Sequential(nn.Linear(2, 2), shared)
    assert supports_sequence(first) and supports_sequence(second)
    assert not Engine([first, second], [None, None]).supports_sequence()
    assert Engine([first, nn.Sequential(nn.Linear(2, 2), LIF())], [None, None]).supports_sequence()
    assert not supports_sequence(nn.Sequential(nn.Flatten(0), nn.Linear(2, 2)))
    # PyTorch's own batch norms are per-step norms here; a subclass or SyncBatchNorm is not
    assert supports_sequence(make_net(norm=nn.BatchNorm2d))
    assert supports_sequence(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), LIF()))

    class DoubledNorm(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    assert not supports_sequence(nn.Sequential(nn.Conv2d(2, 2, 1), DoubledNorm(2), LIF()))
    assert not supports_sequence(nn.Sequential(nn.Linear(2, 2), nn.SyncBatchNorm(2), LIF()))
    from leanspike import multistep

    multistep.ENABLED = False  # the switch that sends every model step by step
    try:
        assert not supports_sequence(net) and not supports_sequence(None)
    finally:
        multistep.ENABLED = True


def test_one_step_intervals_of_small_inputs_run_step_by_step(real_size_rules, monkeypatch):
    """At the real ``ONE_STEP_MIN_VALUES``, SLTT's one-step intervals on a small input take the
    step-by-step path; intervals of two steps or more, and one-step ones on inputs as big as the
    threshold, run layer by layer."""
    from leanspike import multistep

    threshold = real_size_rules["ONE_STEP_MIN_VALUES"]
    monkeypatch.setattr(multistep, "ONE_STEP_MIN_VALUES", threshold)
    assert multistep.pays_off(2, 1) and not multistep.pays_off(1, threshold - 1)
    steps = []
    real = engine_module.run_sequence

    def counted(seq, x, **kwargs):
        steps.append(x.shape[0])
        return real(seq, x, **kwargs)

    monkeypatch.setattr(engine_module, "run_sequence", counted)
    net = make_net()
    x, y = data(T=4)  # 5 samples × 2×8×8: 640 values per step
    x = x.float()
    SLTT().compute_gradients(net, x, y)
    assert steps == []
    BPTT().compute_gradients(net, x, y)
    SLTT(steps_per_backward=2).compute_gradients(net, x, y)
    assert steps == [4, 2, 2]
    steps.clear()
    monkeypatch.setattr(multistep, "ONE_STEP_MIN_VALUES", 640)
    SLTT().compute_gradients(net, x, y)
    assert steps == [1, 1, 1, 1]


def test_special_kernels_only_at_the_widths_they_pay_at(real_size_rules):
    """At the real rules: the first conv is unfolded only with many outputs (VGG-11's 2 → 64, not
    LeNet-1's 1 → 6); NNPACK and the shifted-window weight gradient only with ≥ 32 channels each
    way (VGG-11's layers, not LeNet-1's or the digits CNN's); narrower convs keep oneDNN."""
    from leanspike import multistep

    for name, value in real_size_rules.items():
        setattr(multistep, name, value)
    assert multistep._unfolds(nn.Conv2d(2, 64, 3).weight) and not multistep._unfolds(nn.Conv2d(1, 6, 5).weight)
    wide, narrow = nn.Conv2d(64, 64, 3).weight, nn.Conv2d(16, 32, 3).weight
    assert multistep._winograd(torch.zeros(64, 64, 12, 12), wide, (1, 1), (1, 1)) == multistep.USE_NNPACK
    assert not multistep._winograd(torch.zeros(64, 16, 12, 12), narrow, (1, 1), (1, 1))
    assert multistep.weight_grad_kernel(torch.zeros(8, 64, 6, 6), torch.zeros(8, 64, 6, 6), wide, (1, 1),
                                        (1, 1)) == "shifted"
    assert multistep.weight_grad_kernel(torch.zeros(8, 32, 6, 6), torch.zeros(8, 16, 6, 6), narrow, (1, 1),
                                        (1, 1)) == "oneDNN"


def test_kernels_follow_the_cpus_vector_instructions(real_size_rules, monkeypatch):
    """NNPACK (AVX2 at most) is taken only where oneDNN's direct kernels lack AVX-512, and on
    AVX-512 F(2×2, 3×3) keeps only the calls under 16 samples; the rules as this machine has them."""
    from leanspike import multistep

    for name, value in real_size_rules.items():
        setattr(multistep, name, value)
    avx512 = multistep.CPU_CAPABILITY == "AVX512"
    assert multistep.USE_NNPACK == (torch._nnpack_available() and not avx512)
    assert multistep.WINOGRAD_MAX_BATCH == (16 if avx512 else None)
    weight = nn.Conv2d(128, 128, 3).weight
    assert multistep._winograd_f23(torch.zeros(8, 128, 12, 12), weight, (1, 1), (1, 1))
    monkeypatch.setattr(multistep, "WINOGRAD_MAX_BATCH", 16)
    assert not multistep._winograd_f23(torch.zeros(16, 128, 12, 12), weight, (1, 1), (1, 1))
    assert multistep._winograd_f23(torch.zeros(15, 128, 12, 12), weight, (1, 1), (1, 1))
    # ... except on maps of at most WINOGRAD_ANY_BATCH_PIXELS output pixels, where it stays faster
    assert multistep._winograd_f23(torch.zeros(48, 128, 6, 6), weight, (1, 1), (1, 1))
    assert not multistep._winograd_f23(torch.zeros(48, 128, 8, 8), weight, (1, 1), (1, 1))
    monkeypatch.setattr(multistep, "WINOGRAD_MAX_BATCH", None)
    assert multistep._winograd_f23(torch.zeros(48, 128, 12, 12), weight, (1, 1), (1, 1))
    monkeypatch.setattr(multistep, "USE_NNPACK", False)
    assert not multistep._winograd(torch.zeros(64, 128, 12, 12), weight, (1, 1), (1, 1))
    assert not multistep._dw_as_conv(torch.zeros(64, 128, 12, 12), torch.zeros(64, 128, 12, 12), (1, 1))


def test_ottt_still_runs_step_by_step(float64):
    net = make_net(dropout=0.0).double()
    x, y = data()
    grads = OTTT().compute_gradients(net, x, y)
    assert all(torch.isfinite(g).all() for g in grads.values())


def _saved(method, T):
    net = make_net()
    x, y = data(T=T)
    x, net = x.float(), net.float()
    with SavedTensorMeter(exclude=[net, x]) as meter:
        method.compute_gradients(net, x, y)
    return meter.peak_bytes


def test_saved_bytes_per_step():
    """One BPTT step keeps: the second batch norm's output (floats: the second norm + LIF pair
    keeps only that, norm_lif), per-step mean/invstd of the first norm and invstd of the second,
    the dropped-out spikes and the last spikes as bits. The first conv, norm and LIF are
    recomputed from the input (InputConvNormLIF); the pooled map, from the dropped-out spikes.
    SLTT's one-step calls keep the layers apart (for one step the pairs would save no bytes):
    the second norm's input as floats, and of both LIFs only their spikes as bits (LIFStep:
    backward rebuilds u from the carry each layer keeps for its next step)."""
    B, c1, c2 = 5, 4 * 8 * 8, 6 * 4 * 4
    per_step = 4 * c2 * B + 4 * (2 * 4 + 6) + (c1 + c2) * B // 8
    per_step_apart = 4 * c2 * B + 2 * 4 * (4 + 6) + 2 * (c1 + c2) * B // 8
    sltt = [_saved(SLTT(), T) for T in (2, 6)]
    bptt = [_saved(BPTT(), T) for T in (2, 4, 6)]
    assert sltt[0] == sltt[1]
    assert bptt[2] - bptt[1] == bptt[1] - bptt[0]
    step_with_loss = (bptt[2] - bptt[0]) // 4
    assert 0 <= step_with_loss - per_step < 200  # the loss keeps a few bytes per step
    assert 0 <= sltt[0] - per_step_apart - B * c1 // 8 < 200  # one step's worth plus the dropout mask as bits


def test_sltt_several_steps_per_backward_keeps_its_gradient_and_constant_memory(float64):
    """Per-step batch norm and a per-sequence dropout mask too: the same gradient and running
    statistics as one step per backward, and what is saved grows with the steps per
    backward, never with T."""
    def run(method):
        net = make_net().double()
        x, y = data(T=6)
        torch.manual_seed(7)
        grads = method.compute_gradients(net, x, y)
        return grads, [b.detach().clone() for m in net.modules() if isinstance(m, StepBatchNorm2d)
                       for b in m.buffers()]
    (g1, s1), (g3, s3) = run(SLTT()), run(SLTT(steps_per_backward=3))
    for name in g1:
        torch.testing.assert_close(g3[name], g1[name], **TOL, msg=lambda m: f"{name}: {m}")
    for a, b in zip(s1, s3):
        torch.testing.assert_close(a, b, **TOL)
    two = [_saved(SLTT(steps_per_backward=2), T) for T in (2, 6, 8)]
    one, bptt2 = _saved(SLTT(), 2), _saved(BPTT(), 2)
    carry = 4 * (4 * 8 * 8 + 6 * 4 * 4) * 5  # both LIFs' carries into a later interval (u is rebuilt from them)
    assert two[0] == bptt2  # two steps at once keep what BPTT keeps at T = 2 ...
    assert two[1] == two[2] == bptt2 + carry  # ... and, after the first interval, the carry in
    assert one < two[1]  # one step keeps its LIFs' spikes as bits only (LIFStep); two keep y and the carry


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (1, 0, False), (2, 1, True)])
def test_conv_kernel_choice_keeps_the_gradients(float64, stride, padding, bias):
    from leanspike.multistep import WINOGRAD_MIN_ROWS, Conv2dSequence

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, stride=stride, padding=padding, bias=bias)
    for batch in (1, WINOGRAD_MIN_ROWS // 100 + 1):  # below and above the Winograd threshold (10×10)
        size = 10 * stride + 2 - 2 * padding if stride == 1 else 20
        x = torch.randn(batch, 16, size, size, requires_grad=True)
        out = Conv2dSequence.apply(x, conv.weight, conv.bias, (stride, stride), (padding, padding))
        ref = conv(x)
        torch.testing.assert_close(out, ref, **TOL)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, conv.weight] + ([conv.bias] if bias else []), g)
        want = torch.autograd.grad(ref, [x, conv.weight] + ([conv.bias] if bias else []), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("size,stride,padding,bias", [(3, 1, 1, True), (6, 1, 1, False), (12, 2, 1, True),
                                                     (5, 1, 0, False)])
def test_small_map_weight_gradient_is_the_conv_gradient(float64, size, stride, padding, bias):
    """On maps of at most SMALL_MAP_PIXELS output pixels the weight gradient is one matrix
    product over the unfolded input: the same gradient as the convolution's own backward."""
    from leanspike.multistep import SMALL_MAP_PIXELS, Conv2dSequence

    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, bias=bias)
    x = torch.randn(4, 5, size, size, requires_grad=True)
    out = Conv2dSequence.apply(x, conv.weight, conv.bias, (stride, stride), (padding, padding))
    assert out.shape[2] * out.shape[3] <= SMALL_MAP_PIXELS
    ref = conv(x)
    g = torch.randn_like(out)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, **TOL)


def test_winograd_path_in_float32_agrees_with_the_reference_conv():
    """Big float32 stride-1 calls take NNPACK's Winograd kernels (when available): same gradients
    within float32 Winograd rounding, checked against a float64 reference."""
    from leanspike.multistep import WINOGRAD_MIN_BATCH, Conv2dSequence, _winograd

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = (torch.rand(WINOGRAD_MIN_BATCH, 16, 12, 12) < 0.3).float().requires_grad_(True)
    out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (1, 1))
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    ref, want = float64_conv_reference(conv, x, g)
    for a, b in [(out, ref)] + list(zip(got, want)):
        scale = b.abs().max()
        assert (a.double() - b).abs().max() <= 1e-4 * scale
    assert _winograd(x, conv.weight, (1, 1), (1, 1)) == torch._nnpack_available()


@pytest.mark.parametrize("size,kernel,padding", [(12, 3, 1), (6, 3, 1), (14, 5, 2), (10, 3, 0)])
def test_weight_gradient_as_an_nnpack_conv_agrees_with_the_reference(size, kernel, padding):
    """Big float32 stride-1 calls on 6-16 pixel maps compute dW as one NNPACK convolution
    (samples as channels, the output gradient as kernel): the float64 reference's gradient
    within float32 rounding."""
    from leanspike.multistep import DW_CONV_MIN_BATCH, Conv2dSequence, _dw_as_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, padding=padding)
    x = (torch.rand(DW_CONV_MIN_BATCH, 6, size, size) < 0.3).float()
    out = Conv2dSequence.apply(x, conv.weight, conv.bias, (1, 1), (padding, padding))
    g = torch.randn_like(out)
    assert _dw_as_conv(g, x, (1, 1)) == torch._nnpack_available()
    got = torch.autograd.grad(out, [conv.weight, conv.bias], g)
    ref_conv = nn.Conv2d(6, 5, kernel, padding=padding).double()
    ref_conv.load_state_dict(conv.state_dict())
    want = torch.autograd.grad(ref_conv(x.double()), [ref_conv.weight, ref_conv.bias], g.double())
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()


def test_small_map_weight_gradient_in_parts_is_the_whole(float64, monkeypatch):
    """The unfolded weight gradient bounds its temporary memory by summing parts of the batch."""
    from leanspike import multistep

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(7, 3, 5, 5)
    g = torch.randn(7, 4, 5, 5)
    whole = multistep._weight_grad_shifted(g, x, conv.weight, (1, 1), (1, 1))
    monkeypatch.setattr(multistep, "SHIFT_VALUES", 2 * 4 * 5 * 5)  # two samples per part: four parts
    parts = multistep._weight_grad_shifted(g, x, conv.weight, (1, 1), (1, 1))
    ref = torch.ops.aten.convolution_backward(g, x, conv.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                              [False, True, False])[1]
    torch.testing.assert_close(whole, ref, **TOL)
    torch.testing.assert_close(parts, ref, **TOL)


@pytest.mark.parametrize("size, k, stride, padding", [
    ((3, 3), 3, 1, 1),  # VGG-11's last stage: 49 of 81 products inside the map
    ((7, 6), 3, 2, 1),  # strided, odd sizes
    ((5, 5), 5, 1, 2),
    ((4, 4), 3, 1, 0),  # no padding: every position inside
    ((2, 2), 3, 1, 3),  # padding wider than the map: some kernel positions see only zeros
    ((8, 7), 5, 3, 2),
])
def test_small_map_weight_gradient_leaves_out_the_padding(float64, size, k, stride, padding):
    """Each kernel position's product runs over the outputs whose input lies inside the map only:
    PyTorch's gradient for every stride and padding, and added in place into a running sum."""
    from leanspike import multistep

    torch.manual_seed(0)
    x = torch.randn(3, 4, *size)
    weight = torch.randn(5, 4, k, k, requires_grad=True)
    y = F.conv2d(x, weight, None, stride, padding)
    g = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, weight, g)
    torch.testing.assert_close(multistep._weight_grad_shifted(g, x, weight, (stride,) * 2, (padding,) * 2), want,
                               rtol=1e-12, atol=1e-12)
    total = torch.ones(k, k, 5, 4)
    assert multistep._weight_grad_shifted(g, x, weight, (stride,) * 2, (padding,) * 2, into=total) is None
    torch.testing.assert_close(total.permute(2, 3, 0, 1) - 1, want, rtol=1e-12, atol=1e-12)


def test_long_intervals_run_in_parts_with_the_same_gradients(float64, monkeypatch):
    import leanspike.multistep as ms

    assert ms.chunk_steps(10, 8) == 10 and ms.chunk_steps(100, 8) == 25 and ms.chunk_steps(10, 8, 28) == 4
    whole, _ = _run(BPTT, True, monkeypatch)
    monkeypatch.setattr(ms, "MAX_ROWS", 10)  # 4 steps × 5 samples: parts of 2 steps, state flows between them
    parts, _ = _run(BPTT, True, monkeypatch)
    for name in whole:
        torch.testing.assert_close(whole[name], parts[name], **TOL)


def test_skipped_steps_in_parts_give_the_same_gradients_and_statistics(float64, monkeypatch):
    """SLTT-K (K = 1 of 4 steps): its skipped steps run without a graph in one-step parts (a
    sample's input is 128 values) or whole; the same gradients and batch-norm statistics."""
    import leanspike.multistep as ms

    def sltt_k():
        return SLTTK(1, generator=torch.Generator().manual_seed(1))

    whole, whole_stats = _run(sltt_k, True, monkeypatch)
    monkeypatch.setattr(ms, "NO_GRAD_PART_VALUES", 1)
    parts, parts_stats = _run(sltt_k, True, monkeypatch)
    assert sltt_k().schedule(4).graph_intervals == {1}  # skipped: step 0, then steps 2–3 (two parts)
    for name in whole:
        torch.testing.assert_close(whole[name], parts[name], **TOL)
    for a, b in zip(whole_stats, parts_stats):
        torch.testing.assert_close(a, b, **TOL)


def test_runs_without_a_graph_part_by_input_values_on_the_cpu():
    """VGG-11's events (2×48×48 values a sample) at batch 8: without a graph, balanced parts of at
    most 28 samples; with one, whole up to MAX_ROWS samples."""
    import leanspike.multistep as ms

    def steps(T, B, graph, sample=(2, 48, 48)):
        return ms.part_steps(torch.empty(T, B, *sample), graph)

    assert (steps(6, 8, False), steps(10, 8, False), steps(6, 32, False)) == (3, 4, 1)
    assert (steps(6, 8, True), steps(10, 8, True), steps(6, 32, True), steps(64, 8, True)) == (6, 10, 6, 32)
    assert steps(10, 8, False, sample=(1, 8, 8)) == 10  # small inputs: one part up to MAX_ROWS samples


def _wide_net(seed=0):
    """Convs with C·kh·kw ≥ SHALLOW_DEPTH on ≤ 12×12 maps: their weight gradients take the
    shifted-window path, summed across steps by WeightGradSums inside the engine."""
    torch.manual_seed(seed)
    lif = lambda: LIF(decay=0.5, surrogate=Sigmoid(4.0))  # noqa: E731
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), StepBatchNorm2d(8), lif(),
                        nn.Conv2d(8, 8, 3, padding=1), StepBatchNorm2d(8), lif(), nn.AvgPool2d(2),
                        nn.Conv2d(8, 6, 3, padding=1), lif(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    with torch.no_grad():
        for i in (0, 3, 7):
            net[i].weight.mul_(3.0)
    return net.double()


@pytest.mark.parametrize("method", ["sltt", "bptt", "sltt-k2", "tbptt2"])
def test_weight_gradients_summed_across_steps_equal_the_step_by_step_ones(float64, monkeypatch, method):
    from leanspike import multistep
    make = {"sltt": SLTT, "bptt": BPTT, "tbptt2": lambda: TBPTT(2),
            "sltt-k2": lambda: SLTTK(2, generator=torch.Generator().manual_seed(3))}[method]
    x, y = data(T=4)
    sums = []
    real_sum_for = multistep.WeightGradSums.sum_for
    monkeypatch.setattr(multistep.WeightGradSums, "sum_for",
                        lambda self, w: sums.append(w) or real_sum_for(self, w))
    grads = make().compute_gradients(_wide_net(), x, y)
    assert len({id(w) for w in sums}) == 2  # both wide convs summed their weight gradients in place
    monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
    reference = make().compute_gradients(_wide_net(), x, y)  # step by step: autograd adds per step
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], **TOL, msg=lambda m: f"{name}: {m}")


def test_weight_gradient_sums_flush_before_every_update_and_skip_hooked_weights(float64, monkeypatch):
    """Per-interval updates see complete gradients; a weight with a hook keeps autograd's path
    (its hook runs once per backward)."""
    from leanspike import multistep
    x, y = data(T=4)

    def trained(sums_on: bool):
        if not sums_on:
            monkeypatch.setattr(multistep.WeightGradSums, "current", classmethod(lambda cls: None))
        net = _wide_net()
        calls = []
        net[7].weight.register_hook(lambda g: calls.append(1))
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        TBPTT(1, update="interval").train_step(net, x, y, opt)
        monkeypatch.undo()
        return [p.detach().clone() for p in net.parameters()], len(calls)

    (on, hooked_on), (off, hooked_off) = trained(True), trained(False)
    assert hooked_on == hooked_off == 4  # one backward per interval, the hook each time
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, **TOL)
    assert any(not torch.equal(a, b) for a, b in zip(on, [p.detach() for p in _wide_net().parameters()]))


@pytest.mark.parametrize("method", [BPTT, SLTT])
def test_under_autocast_the_engine_runs_step_by_step(method, monkeypatch):
    """The layer-by-layer functions save and recompute tensors for a backward that runs outside
    autocast; under autocast the engine takes the plain step-by-step path, which trains."""
    net = make_net()
    x, y = data()
    x = x.float()
    monkeypatch.setattr(engine_module, "run_sequence", lambda *a, **k: pytest.fail("layer by layer"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not supports_sequence(net)
        grads = method().compute_gradients(net, x, y)
    assert supports_sequence(net)  # outside autocast, layer by layer again
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().max() > 0 for g in grads.values())


def _both_paths(net_factory, x, y, factory, monkeypatch):
    """Gradients and norm buffers of one method on the two paths (fresh equal nets, same draws)."""
    out = []
    for sequence in (True, False):
        net = net_factory()
        if not sequence:
            monkeypatch.setattr(Engine, "supports_sequence", lambda self: False)
        torch.manual_seed(7)
        grads = factory().compute_gradients(net, x, y)
        monkeypatch.undo()
        buffers = [b.detach().clone() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for b in m.buffers()]
        out.append((grads, buffers))
    return out


def _layout_nets():
    lif = lambda: LIF(decay=0.5, surrogate=Sigmoid(4.0))  # noqa: E731
    head = lambda features: (nn.Flatten(), nn.Linear(features, 3))  # noqa: E731
    return {
        # a channels-last input keeps the conv output channels-last
        "conv-bn": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), lif(),
                                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), lif(), *head(4 * 64)),
        # a norm on the input itself sees the input's own layout
        "bn-first": lambda: nn.Sequential(nn.BatchNorm2d(2), lif(), nn.Conv2d(2, 4, 3, padding=1),
                                          nn.BatchNorm2d(4), lif(), *head(4 * 64)),
        # an upsampling adaptive pooling gives a view whose cells repeat (stride 0)
        "upsample-bn": lambda: nn.Sequential(nn.Conv2d(2, 4, 8), nn.AdaptiveAvgPool2d(2), nn.BatchNorm2d(4), lif(),
                                             *head(4 * 4)),
    }


@pytest.mark.parametrize("layout", ["channels-last", "batch-first", "contiguous"])
@pytest.mark.parametrize("net_name", ["conv-bn", "bn-first", "upsample-bn"])
@pytest.mark.parametrize("factory", [BPTT, SLTT], ids=["bptt", "sltt"])
def test_norms_on_inputs_of_any_memory_layout(float64, layout, net_name, factory, monkeypatch, real_size_rules):
    """The per-step norms get the same values whatever the memory layout of what reaches them:
    PyTorch's CPU ``native_batch_norm.out`` misreads non-contiguous inputs (and leaves its
    statistics unwritten), so they are made contiguous first. (The first conv through oneDNN,
    as at its real size rule: it keeps a channels-last input's layout.)"""
    from leanspike import multistep

    multistep.SHALLOW_MIN_OUT = real_size_rules["SHALLOW_MIN_OUT"]
    x, y = data(T=3, B=4)
    if layout == "channels-last":
        x = torch.stack([step.contiguous(memory_format=torch.channels_last) for step in x])  # C innermost
    elif layout == "batch-first":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # a [B, T, ...] batch seen time first
    nets = _layout_nets()
    net_factory = lambda: (torch.manual_seed(0), nets[net_name]().double())[1]  # noqa: E731
    (g_seq, b_seq), (g_step, b_step) = _both_paths(net_factory, x, y, factory, monkeypatch)
    assert sum(int(g.abs().sum() > 0) for g in g_seq.values()) == len(g_seq)
    for name in g_seq:
        torch.testing.assert_close(g_seq[name], g_step[name], **TOL, msg=lambda m: f"{name}: {m}")
    for a, b in zip(b_seq, b_step, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_a_norm_shared_across_nesting_levels_keeps_its_step_order(float64, monkeypatch):
    """One BatchNorm2d used at two depths: the engine must run it step by step (it did run layer
    by layer, and the norm's running statistics came out in another order)."""
    def net_factory():
        torch.manual_seed(0)
        norm = nn.BatchNorm2d(4)
        lif = lambda: LIF(decay=0.5, surrogate=Sigmoid(4.0))  # noqa: E731
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, lif(),
                             nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), norm, lif()),
                             nn.Flatten(), nn.Linear(4 * 64, 3)).double()

    x, y = data(T=3, B=4)
    (g_seq, b_seq), (g_step, b_step) = _both_paths(net_factory, x, y, BPTT, monkeypatch)
    for name in g_seq:
        torch.testing.assert_close(g_seq[name], g_step[name], **TOL)
    for a, b in zip(b_seq, b_step, strict=True):
        torch.testing.assert_close(a, b, **TOL)
