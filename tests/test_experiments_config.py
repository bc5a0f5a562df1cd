"""The typed config, the shipped presets and how the command line overrides them."""

from __future__ import annotations

import yaml
import pytest
import torch

from leanspike.blocks import spiking_depth
from leanspike.cli import main
from leanspike.errors import UserError
from leanspike.experiments import config as C
from leanspike.experiments.build import build_method, build_optimizer, build_scheduler
from leanspike.experiments.presets import load_preset, preset_names
from leanspike.models.registry import build_model
from leanspike.trainer import TrainConfig

# what each dataset feeds a model (channels, side, classes); DVS frames at the preset's size
SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "imagenet": (3, 224, 1000), "emnist": (1, 28, 47),
          "dvs-gesture": (2, 128, 11), "cifar10-dvs": (2, 128, 10)}


def test_values_are_type_checked_with_the_field_named():
    with pytest.raises(UserError, match=r"config field optimizer\.lr: expected a number, got 'fast' \(str\)"):
        C.from_dict({"optimizer": {"lr": "fast"}})
    with pytest.raises(UserError, match=r"config field epochs: expected an integer, got True \(bool\)"):
        C.from_dict({"epochs": True})
    with pytest.raises(UserError, match=r"config field method\.k: expected an integer or null, got 2\.5"):
        C.from_dict({"method": {"k": 2.5}})
    with pytest.raises(UserError, match=r"config section model: expected a mapping"):
        C.from_dict({"model": "resnet18"})
    with pytest.raises(UserError, match=r"unknown config field neuron\.threshold"):
        C.from_dict({"neuron": {"threshold": 1.0}})
    cfg = C.from_dict({"optimizer": {"lr": 1, "weight_decay": "5e-4"}, "method": {"k": None}})
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string


def test_dotted_overrides_reach_sections_and_free_form_options():
    cfg = C.apply_overrides(C.ExperimentConfig(), [("optimizer.lr", 0.05), ("data.options.encoding", "rate"),
                                                  ("method.name", "sltt-k"), ("method.K", 2)])
    assert cfg.optimizer.lr == 0.05 and cfg.data.options == {"encoding": "rate"}
    assert (cfg.method.name, cfg.method.K) == ("sltt-k", 2)
    assert C.parse_assignment("model.options.hidden=[32, 16]") == ("model.options.hidden", [32, 16])
    with pytest.raises(UserError, match="config field T is not a section"):
        C.apply_overrides(C.ExperimentConfig(), [("T.x", 1)])


def test_flat_train_config_maps_onto_the_schema():
    cfg = TrainConfig(method="sltt-k", K=2, T=3, lr=0.2, tau=1.5, extra={"optimizer.name": "adam"}).to_experiment()
    assert (cfg.method.name, cfg.method.K, cfg.T, cfg.neuron.tau) == ("sltt-k", 2, 3, 1.5)
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 0.2)


def test_schedules_cosine_and_halving_every_20_epochs():
    param = [torch.nn.Parameter(torch.zeros(1))]
    step = C.apply_overrides(C.ExperimentConfig(), {"schedule.name": "step", "epochs": 100, "optimizer.lr": 0.4})
    opt = build_optimizer(step, param)
    sched = build_scheduler(step, opt)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[19] == 0.4 and lrs[20] == lrs[39] == 0.2 and lrs[40] == 0.1
    cos = C.apply_overrides(C.ExperimentConfig(), {"epochs": 10, "optimizer.lr": 0.1})
    opt = build_optimizer(cos, param)
    sched = build_scheduler(cos, opt)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # half-way down the cosine
    adam = build_optimizer(C.apply_overrides(cos, {"optimizer.name": "adam"}), param)
    assert isinstance(adam, torch.optim.Adam)


def _meta_model(cfg: C.ExperimentConfig):
    channels, side, classes = SHAPES[cfg.data.name]
    side = cfg.data.options.get("size", side)
    from leanspike.experiments.build import neuron_factory

    with torch.device("meta"):
        return build_model(cfg.model.name, in_channels=channels, num_classes=classes, input_size=side,
                           neuron=neuron_factory(cfg), **cfg.model.options)


def test_every_preset_is_valid_and_builds_its_model_and_method():
    names = preset_names()
    assert len(names) >= 30
    for name in names:
        cfg = load_preset(name)
        assert cfg.name == name and cfg.description and cfg.source
        if cfg.requires_init:
            with pytest.raises(UserError, match="give --init-from"):
                C.validate(cfg)
            cfg = C.apply_overrides(cfg, {"init_from": "pretrain-run"})
        C.validate(cfg)
        model = _meta_model(cfg)
        build_method(cfg)
        points = [cfg]
        if cfg.sweep:
            from leanspike.experiments.sweep import expand

            points = [p.config for p in expand(cfg, cfg.sweep)]
        for point in points:
            if point.method.name == "ttl":
                assert point.method.n <= spiking_depth(model), (name, point.method.n)


def test_presets_carry_the_papers_numbers():
    """Spot checks against SLTT Table S4 / section I and the truncated-local paper's Table 1."""
    c100 = load_preset("sltt-cifar100-resnet18-sltt")
    assert (c100.epochs, c100.optimizer.lr, c100.batch_size, c100.optimizer.weight_decay, c100.T) == \
           (200, 0.1, 128, 5e-4, 6)
    assert (c100.neuron.tau, c100.neuron.v_threshold, c100.neuron.surrogate) == (1.1, 1.0, "triangle")
    assert (c100.loss.name, c100.loss.lambda_mse, c100.schedule.name) == ("sltt", 0.05, "cosine")
    dvs = load_preset("sltt-cifar10-dvs-vgg11-sltt-k2")
    assert (dvs.T, dvs.method.K, dvs.optimizer.lr, dvs.batch_size, dvs.model.options["dropout"]) == \
           (10, 2, 0.05, 128, 0.3)
    assert dvs.loss.target == "onehot" and dvs.data.options["size"] == 48
    gesture = load_preset("sltt-dvs-gesture-vgg11-sltt-k4")
    assert (gesture.T, gesture.method.K, gesture.batch_size, gesture.epochs, gesture.model.options["dropout"]) == \
           (20, 4, 16, 300, 0.4)
    pre, fine = load_preset("sltt-imagenet-nfresnet50-pretrain"), load_preset("sltt-imagenet-nfresnet50-sltt-k1")
    assert (pre.T, pre.epochs, pre.optimizer.lr, pre.batch_size, pre.optimizer.weight_decay) == (1, 100, 0.1, 256, 1e-5)
    assert (fine.T, fine.epochs, fine.optimizer.lr, fine.optimizer.weight_decay, fine.method.K) == (6, 30, 0.001, 0.0, 1)
    assert fine.requires_init and fine.loss.lambda_mse == 0.0
    ottt = load_preset("sltt-ottt-dvs-gesture-ottt")
    assert (ottt.method.name, ottt.model.name, ottt.T) == ("ottt", "vgg11_ws", 20)
    emnist = load_preset("ttl-emnist-lenet1")
    assert (emnist.T, emnist.batch_size, emnist.neuron.decay, emnist.neuron.surrogate_width) == (20, 1024, 0.9, 0.5)
    assert (emnist.schedule.name, emnist.schedule.step_size, emnist.schedule.gamma, emnist.epochs) == \
           ("step", 20, 0.5, 100)
    assert emnist.sweep["method.k"] == [20, 10, 5, 2, 1] and emnist.sweep["method.n"] == [4, 2, 1]
    assert load_preset("ttl-cifar10-dvs-alexnet").sweep["method.k"] == [100, 50, 20, 10, 1]
    assert load_preset("ttl-dvs-gesture-lenet2").data.options["window_ms"] == 20


def test_presets_command_lists_and_shows(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in preset_names())
    assert main(["presets", "ttl-cifar10-alexnet"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert C.from_dict(shown) == load_preset("ttl-cifar10-alexnet")


def test_train_from_a_preset_with_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "sltt-cifar10-resnet18-sltt", "--dataset", "digits", "--model", "spiking_mlp",
                 "--T", "2", "--epochs", "1", "--max-batches", "2", "--batch-size", "8",
                 "--set", "optimizer.lr=0.05", "--set", "model.options={hidden: [16]}", "--no-progress",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = C.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved.name == "sltt-cifar10-resnet18-sltt" and saved.method.name == "sltt"
    assert (saved.optimizer.lr, saved.optimizer.weight_decay, saved.T) == (0.05, 5e-5, 2)  # override, preset, flag
    assert (saved.loss.name, saved.neuron.tau, saved.model.options) == ("sltt", 1.1, {"hidden": [16]})
    env = yaml.safe_load((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert csv_rows[0].startswith("epoch,train_loss,train_accuracy,test_accuracy,lr") and len(csv_rows) == 2
