"""The model zoo: registry, parameter counts by hand, forward on every input shape, BPTT gradients."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from torch import nn

from leanspike.cli import main
from leanspike.layers import Scale, SequenceDropout, StepBatchNorm2d, WSConv2d
from leanspike.methods import BPTT, OTTT, SLTT, SLTTK, TBPTT, TruncatedLocalBPTT
from leanspike.models import MODELS, build_model, describe_models
from leanspike.models.nf_resnet import NFBasicBlock
from leanspike.models.resnet import PreActBlock
from leanspike.neuron import LIF
from leanspike.state import reset_states
from leanspike.surrogate import Rectangle

ALL = sorted(MODELS)
SHAPES = [(1, 28), (3, 32), (2, 48), (2, 128), (3, 224)]  # (channels, side)


# ------------------------------------------------------------------ parameter arithmetic
def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def wsconv(cin, cout, k):  # weight + bias + per-channel gain
    return conv(cin, cout, k) + cout


def bn(c):
    return 2 * c


def linear(i, o):
    return i * o + o


def vgg_count(cin, classes, ws):
    total, c = 0, cin
    for w in (64, 128, 256, 256, 512, 512, 512, 512):
        total += wsconv(c, w, 3) if ws else conv(c, w, 3) + bn(w)
        c = w
    return total + linear(512 * 7 * 7, classes)


def resnet18_count(cin, classes):
    total = conv(cin, 64, 3, bias=False)
    pairs = [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    for a, b in pairs:
        total += bn(a) + conv(a, b, 3) + bn(b) + conv(b, b, 3) + (conv(a, b, 1) if a != b else 0)
    return total + bn(512) + linear(512, classes)


def nf_count(cin, classes, blocks, bottleneck):
    total, c = wsconv(cin, 64, 7), 64
    for stage, n in enumerate(blocks):
        w = 64 * 2 ** stage
        out = 4 * w if bottleneck else w
        for i in range(n):
            strided = stage > 0 and i == 0
            if bottleneck:
                total += wsconv(c, w, 1) + wsconv(w, w, 3) + wsconv(w, out, 1)
            else:
                total += wsconv(c, w, 3) + wsconv(w, w, 3)
            total += 1  # skip gain
            if strided or c != out:
                total += wsconv(c, out, 1)
            c = out
    return total + linear(c, classes)


def lenet_count(cin, classes, widths):
    c1, c2, c3, f = widths
    return conv(cin, c1, 5) + conv(c1, c2, 5) + conv(c2, c3, 5) + linear(c3, f) + linear(f, classes)


def alexnet_count(cin, classes):
    convs = conv(cin, 96, 3) + conv(96, 256, 3) + conv(256, 384, 3) + conv(384, 512, 3) + conv(512, 384, 3) \
        + conv(384, 256, 3)
    return convs + linear(256 * 4 * 4, 4096) + linear(4096, 1024) + linear(1024, classes)


EXPECTED = {
    "spiking_mlp": lambda c, k, s: linear(c * s * s, 128) + linear(128, k),
    "spiking_cnn": lambda c, k, s: conv(c, 16, 3, False) + bn(16) + conv(16, 32, 3, False) + bn(32)
    + linear(32 * (s // 4) ** 2, k),
    "vgg11": lambda c, k, s: vgg_count(c, k, ws=False),
    "vgg11_ws": lambda c, k, s: vgg_count(c, k, ws=True),
    "resnet18": lambda c, k, s: resnet18_count(c, k),
    "nf_resnet34": lambda c, k, s: nf_count(c, k, (3, 4, 6, 3), False),
    "nf_resnet50": lambda c, k, s: nf_count(c, k, (3, 4, 6, 3), True),
    "nf_resnet101": lambda c, k, s: nf_count(c, k, (3, 4, 23, 3), True),
    "lenet1": lambda c, k, s: lenet_count(c, k, (6, 16, 120, 128)),
    "lenet2": lambda c, k, s: lenet_count(c, k, (64, 128, 128, 256)),
    "alexnet": lambda c, k, s: alexnet_count(c, k),
}


def test_every_model_has_an_expected_count():
    assert set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channels,side,classes", [(2, 28, 11), (3, 224, 1000)])
def test_parameter_counts(name, channels, side, classes):
    with torch.device("meta"):
        model = build_model(name, in_channels=channels, num_classes=classes, input_size=side)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name](channels, classes, side)


def test_known_reference_counts():
    described = describe_models()
    counts = {d.name: d.parameters for d in described}
    # written out: ResNet-18 (CIFAR-10) and NF-ResNet-50 (ImageNet)
    assert counts["resnet18"] == 11_176_906
    assert counts["nf_resnet50"] == 25_557_048
    assert counts["lenet1"] == 156 + 2416 + 48120 + 15488 + (128 * 47 + 47)
    for d in described:
        ref = d.reference
        assert d.parameters == EXPECTED[d.name](ref.in_channels, ref.num_classes, ref.input_size)


# ------------------------------------------------------------------ registry
def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg12'.*alexnet.*vgg11"):
        build_model("vgg12", in_channels=3, num_classes=10, input_size=32)
    with pytest.raises(ValueError, match="no option widht.*dropout"):
        build_model("vgg11", in_channels=3, num_classes=10, input_size=32, widht=3)
    with pytest.raises(ValueError, match="at least 28"):
        build_model("lenet1", in_channels=1, num_classes=10, input_size=20)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("alexnet", in_channels=3, num_classes=0, input_size=32)
    with pytest.raises(ValueError, match="input_size"):
        build_model("alexnet", in_channels=3, num_classes=10, input_size=(32, 32, 3))
    with pytest.raises(ValueError, match="neuron or leak"):
        build_model("lenet1", in_channels=1, num_classes=10, input_size=28, neuron=LIF, leak=0.5)


def test_registry_holds_factories_and_builds_fresh_models():
    assert all(callable(f) and not isinstance(f, nn.Module) for f in MODELS.values())
    a = build_model("spiking_cnn", in_channels=1, num_classes=10, input_size=28)
    b = build_model("spiking_cnn", in_channels=1, num_classes=10, input_size=28)
    assert a is not b and a[0].weight.data_ptr() != b[0].weight.data_ptr()


def test_neuron_factory_is_used_everywhere():
    model = build_model("resnet18", in_channels=3, num_classes=10, input_size=32, neuron=partial(LIF, tau=2.0))
    neurons = [m for m in model.modules() if isinstance(m, LIF)]
    assert len(neurons) == 17 and all(n.decay == 0.5 for n in neurons)  # 8 blocks × 2 + head


def test_ttl_models_default_to_the_papers_lif_and_emit_spikes():
    lenet = build_model("lenet1", in_channels=1, num_classes=10, input_size=28)
    neurons = [m for m in lenet if isinstance(m, LIF)]
    assert len(neurons) == 5  # 3 conv + 1 FC + spiking output layer
    for n in neurons:
        assert (n.decay, n.v_threshold, n.reset, n.surrogate) == (0.9, 0.5, "soft-unleaked", Rectangle(0.5))
    assert isinstance(lenet[-1], LIF) and isinstance(lenet[-2], nn.Linear)
    alex = build_model("alexnet", in_channels=3, num_classes=10, input_size=32, leak=0.7, v_threshold=0.3)
    neurons = [m for m in alex if isinstance(m, LIF)]
    assert len(neurons) == 9 and all((n.decay, n.v_threshold) == (0.7, 0.3) for n in neurons)
    # a dropout after each conv/FC (not after the output layer), 2 average pools
    assert sum(isinstance(m, SequenceDropout) for m in alex) == 8
    assert sum(isinstance(m, nn.AvgPool2d) for m in alex) == 2
    assert sum(isinstance(m, nn.Conv2d) for m in alex) == 6
    with torch.device("meta"):
        zoo = [build_model(name, in_channels=2, num_classes=4, input_size=48) for name in ALL]
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for model in zoo for m in model.modules())


def test_vgg_layout():
    vgg = build_model("vgg11", in_channels=2, num_classes=10, input_size=48)
    kinds = [type(m).__name__ for m in vgg]
    assert kinds.count("Conv2d") == 8 and kinds.count("StepBatchNorm2d") == 8 and kinds.count("AvgPool2d") == 5
    assert kinds.count("Linear") == 1 and kinds[-3:] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    drops = [m for m in vgg if isinstance(m, SequenceDropout)]
    assert len(drops) == 8 and all(d.p == 0.3 for d in drops)
    for i, m in enumerate(vgg):  # dropout right behind every LIF
        if isinstance(m, LIF):
            assert isinstance(vgg[i + 1], SequenceDropout)
    # pool after convs 1, 2, 4, 6, 8
    convs_before_pool = []
    n = 0
    for m in vgg:
        n += isinstance(m, nn.Conv2d)
        if isinstance(m, nn.AvgPool2d):
            convs_before_pool.append(n)
    assert convs_before_pool == [1, 2, 4, 6, 8]
    # 28×28 reaches 1×1 after four pools; the fifth is skipped
    small = build_model("vgg11", in_channels=1, num_classes=10, input_size=28)
    assert sum(isinstance(m, nn.AvgPool2d) for m in small) == 4
    ws = build_model("vgg11_ws", in_channels=2, num_classes=10, input_size=48, dropout=0.4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ws.modules())
    assert sum(isinstance(m, WSConv2d) for m in ws) == 8 and sum(isinstance(m, Scale) for m in ws) == 8
    assert all(d.p == 0.4 for d in ws if isinstance(d, SequenceDropout))


def test_residual_blocks_are_top_level_children_and_nf_betas_track_variance():
    r18 = build_model("resnet18", in_channels=3, num_classes=10, input_size=32)
    assert sum(isinstance(m, PreActBlock) for m in r18) == 8
    assert all(isinstance(m, StepBatchNorm2d) for m in r18.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.device("meta"):
        nf = build_model("nf_resnet34", in_channels=3, num_classes=1000, input_size=224)
    blocks = [m for m in nf if isinstance(m, NFBasicBlock)]
    assert len(blocks) == 16
    # expected variance by hand: 1 after the stem, +α² per block, 1 + α² after a transition
    a2 = 0.2 ** 2
    expected_var = [1.0, 1 + a2, 1 + 2 * a2,  # stage 1 has no transition (64 -> 64)
                    1 + 3 * a2, 1 + a2, 1 + 2 * a2, 1 + 3 * a2,
                    1 + 4 * a2, 1 + a2, 1 + 2 * a2, 1 + 3 * a2, 1 + 4 * a2, 1 + 5 * a2,
                    1 + 6 * a2, 1 + a2, 1 + 2 * a2]
    for block, var in zip(blocks, expected_var):
        assert block.alpha == 0.2 and math.isclose(block.beta, math.sqrt(var))
    with torch.device("meta"):
        nf101 = build_model("nf_resnet101", in_channels=3, num_classes=1000, input_size=224)
    assert sum(isinstance(m, NFBasicBlock) for m in nf101) == 33


def test_nf_block_is_identity_at_init_and_keeps_unit_variance_when_open():
    torch.manual_seed(0)
    block = NFBasicBlock(64, 64, 1, beta=1.0, alpha=0.2, neuron=LIF)
    x = torch.randn(8, 64, 8, 8)
    reset_states(block)
    assert torch.equal(block(x), x)  # zero skip gain
    with torch.no_grad():
        block.skip_gain.fill_(1.0 / 0.2)  # open the branch fully: output = x + f(x)
    reset_states(block)
    branch = block(x) - x
    assert 0.5 < branch.var().item() < 2.0  # WS + spike gain keep the branch near unit variance


# ------------------------------------------------------------------ forward on every shape
#: the wide networks run the shape checks at a reduced base width (the spatial logic is
#: width-independent); full width is exercised once at 224×224 below
WIDE = {"vgg11": 16, "vgg11_ws": 16, "resnet18": 16, "nf_resnet34": 8, "nf_resnet50": 8, "nf_resnet101": 8}
SPIKING_OUTPUT = ("lenet1", "lenet2", "alexnet")


def _run(model, steps, batch, channels, side):
    reset_states(model)
    x = torch.randn(steps, batch, channels, side, side)
    with torch.no_grad():
        return [model(x[t]) for t in range(steps)]


@pytest.mark.parametrize("channels,side", SHAPES)
@pytest.mark.parametrize("name", ALL)
def test_forward_on_every_input_shape(name, channels, side):
    torch.manual_seed(0)
    steps, batch = (2, 2) if side <= 48 else ((1, 2) if side <= 128 else (1, 1))
    options = {"width": WIDE[name]} if name in WIDE else {}
    model = build_model(name, in_channels=channels, num_classes=5, input_size=side, **options).train()
    for out in _run(model, steps, batch, channels, side):
        assert out.shape == (batch, 5) and torch.isfinite(out).all()
        if name in SPIKING_OUTPUT:
            assert set(out.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", sorted(WIDE))
def test_full_width_forward_at_224(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=1000, input_size=224).train()
    (out,) = _run(model, 1, 1, 3, 224)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,channels,side", [("lenet1", 1, 28), ("lenet2", 2, 128), ("alexnet", 3, 32),
                                                ("vgg11", 2, 48), ("resnet18", 3, 32)])
def test_every_spiking_layer_fires_at_init(name, channels, side):
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=10, input_size=side,
                        **({"width": 16} if name in WIDE else {}))
    rates: list[float] = []
    for m in model.modules():
        if isinstance(m, LIF):
            m.register_forward_hook(lambda mod, inp, out: rates.append(out.mean().item()))
    _run(model, 1, 4, channels, side)
    assert len(rates) == sum(isinstance(m, LIF) for m in model.modules())
    assert min(rates) > 0.01, rates


# ------------------------------------------------------------------ one BPTT step each
class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the sum of |gradient| it applied over all its steps."""

    def step(self, closure=None):
        grads = [None if p.grad is None else p.grad.detach().abs() for g in self.param_groups for p in g["params"]]
        old = getattr(self, "seen", [])
        self.seen = [a if b is None else (b if a is None else a + b)
                     for a, b in zip(old + [None] * (len(grads) - len(old)), grads)]
        return super().step(closure)


METHODS = {
    "bptt": lambda: BPTT(),
    "tbptt": lambda: TBPTT(1, update="interval"),
    "sltt": lambda: SLTT(),
    "sltt-k": lambda: SLTTK(1, generator=torch.Generator().manual_seed(0)),
    "ttl-trainable": lambda: TruncatedLocalBPTT(1, 1, classifier="trainable"),
    "ttl-random": lambda: TruncatedLocalBPTT(1, 1, classifier="random"),
    "ottt": lambda: OTTT(),
}


@pytest.mark.parametrize("method_name", sorted(METHODS))
@pytest.mark.parametrize("name", ALL)
def test_every_method_steps_every_model(name, method_name):
    """One training step: every model parameter gets a finite, non-zero gradient; a local
    method's random classifiers get none and never change."""
    torch.manual_seed(0)
    options = {"width": WIDE[name]} if name in WIDE else {}
    model = build_model(name, in_channels=2, num_classes=3, input_size=28, **options)
    with torch.no_grad():
        # At init an NF-ResNet is the identity with a zero classifier (no gradient reaches
        # the convs), and on i.i.d. noise the average pools shrink the variance of the
        # weight-standardised nets until deep layers stay silent (zero surrogate gradient):
        # open the skips and raise the WS gains so that every path carries gradient.
        for m in model.modules():
            if isinstance(m, NFBasicBlock):
                m.skip_gain.fill_(1.0)
            if isinstance(m, WSConv2d):
                m.gain.fill_(3.0)
        if name.startswith("nf_"):
            nn.init.normal_(model[-1].weight, 0, 0.1)
    method = METHODS[method_name]()
    params = list(model.parameters())
    first = params[0].detach().clone()
    opt = RecordingSGD(params, lr=0.1)
    inputs = torch.randn(2, 4, 2, 28, 28)  # T = 2, B = 4 (B = 2 makes per-step BN on 1×1 maps degenerate)
    result = method.train_step(model, inputs, torch.tensor([0, 2, 1, 0]), opt)
    if method_name == "sltt-k":
        # K = 1 of T = 2: the one sampled step may leave a spiking output layer silent (zero
        # surrogate gradient everywhere); the other step gets its turn in a second batch
        method.train_step(model, inputs, torch.tensor([0, 2, 1, 0]), opt)
    assert math.isfinite(result.loss) and result.predictions.shape == (4,) and result.mean_output.shape == (4, 3)
    names = [n for n, _ in model.named_parameters()]
    seen = opt.seen[:len(names)]  # model parameters first; a local method's classifiers follow
    missing = [n for n, g in zip(names, seen) if g is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(g).all() for g in seen)
    zero = [n for n, g in zip(names, seen) if not g.any()]
    if not method_name.startswith("ttl"):
        # a local block learns only from its own classifier, which may sit silent at init
        # (no surrogate gradient): zeros are allowed there, missing gradients are not
        assert not zero, f"all-zero gradient for {zero}"
        assert not torch.equal(first, params[0])  # the optimizer stepped
    if method_name.startswith("ttl") and method.heads is not None:
        heads = [p for h in method.heads for p in h.parameters()]
        if method_name == "ttl-random":
            assert all(p.grad is None and not p.requires_grad for p in heads)
            assert len(opt.seen) == len(names)  # never added to the optimizer
        else:
            assert all(g is not None and torch.isfinite(g).all() for g in opt.seen[len(names):])


# ------------------------------------------------------------------ CLI
def test_models_command_lists_names_counts_and_shapes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out
    assert "11,176,906" in out and "H, W ≥ 28" in out
    assert main(["models", "--input", "2x48x48", "--num-classes", "11", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vgg11"]["parameters"] == EXPECTED["vgg11"](2, 11, 48)
    assert main(["models", "--input", "3x32"]) == 2
