"""``leanspike train``: one training run, from a preset, a YAML file or flags.

The config is assembled in layers, each overriding the last: the schema's defaults, a
preset (``--preset``) or file (``--config``), the direct flags given, then every
``--set FIELD=VALUE`` in order. ``--resume --out DIR`` continues the run in DIR with
its own ``config.yaml``. Runs data-parallel when launched by ``torchrun``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..experiments import config as C

#: direct flag (argparse dest) -> config field
FLAG_FIELDS = {
    "dataset": "data.name", "data_root": "data.root", "workers": "data.workers",
    "model": "model.name",
    "method": "method.name", "k": "method.k", "K": "method.K", "n": "method.n", "classifier": "method.classifier",
    "steps_per_backward": "method.steps_per_backward",
    "T": "T", "epochs": "epochs", "batch_size": "batch_size", "seed": "seed", "max_batches": "max_batches",
    "eval_every": "eval_every", "device": "device", "amp": "amp", "init_from": "init_from",
    "optimizer": "optimizer.name", "lr": "optimizer.lr", "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay", "schedule": "schedule.name",
    "tau": "neuron.tau", "decay": "neuron.decay", "v_threshold": "neuron.v_threshold",
    "surrogate": "neuron.surrogate", "loss": "loss.name",
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``train`` and ``sweep``: config sources and direct overrides."""
    src = p.add_argument_group("config source")
    src.add_argument("--preset", default=None, help="a shipped preset (`leanspike presets` lists them)")
    src.add_argument("--config", default=None, metavar="YAML", help="a YAML config file (may `extends:` a preset)")
    src.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                     help="override any config field, e.g. --set optimizer.lr=0.05 (repeatable)")
    g = p.add_argument_group("direct overrides (default: the preset's or the schema's value)")
    g.add_argument("--dataset", default=None, help="digits (built in), fashion-mnist, cifar10, dvs-gesture, ...")
    g.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    g.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader worker processes")
    g.add_argument("--model", default=None, help="a model name (`leanspike models` lists them)")
    g.add_argument("--method", default=None, choices=C.METHODS)
    g.add_argument("--T", type=positive_int, default=None, help="time steps")
    g.add_argument("--k", type=positive_int, default=None, help="TBPTT / ttl interval length")
    g.add_argument("--K", type=positive_int, default=None, help="SLTT-K: steps with backward per batch")
    g.add_argument("--n", type=positive_int, default=None, help="ttl: spiking layers per local block")
    g.add_argument("--steps-per-backward", type=positive_int, default=None,
                   help="SLTT: steps back-propagated at once (default 1; same gradient, memory ∝ it)")
    g.add_argument("--classifier", default=None, choices=C.CLASSIFIERS, help="ttl: local classifiers")
    g.add_argument("--epochs", type=positive_int, default=None)
    g.add_argument("--batch-size", type=positive_int, default=None)
    g.add_argument("--optimizer", default=None, choices=C.OPTIMIZERS)
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--momentum", type=number, default=None)
    g.add_argument("--weight-decay", type=number, default=None)
    g.add_argument("--schedule", default=None, choices=C.SCHEDULES,
                   help="cosine annealing, step (x gamma every step_size epochs) or constant")
    g.add_argument("--tau", type=number, default=None, help="LIF time constant (decay = 1 - 1/tau)")
    g.add_argument("--decay", type=number, default=None, help="LIF leak λ given directly")
    g.add_argument("--v-threshold", type=number, default=None)
    g.add_argument("--surrogate", default=None)
    g.add_argument("--loss", default=None, help="ce, sltt, mean-ce (BPTT only), rate-mse")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--max-batches", type=positive_int, default=None, help="cap batches per epoch")
    g.add_argument("--eval-every", type=positive_int, default=None, help="evaluate every N epochs")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--amp", dest="amp", action="store_true", default=None, help="mixed precision on CUDA (default)")
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--init-from", default=None, metavar="RUN_OR_CHECKPOINT", help="start from these weights")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model with one method (a preset, a YAML file or flags)")
    add_config_arguments(p)
    p.add_argument("--out", default=None, help="results folder (must not exist or be empty, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for dest, key in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        out.append((key, value))
        if dest == "tau":
            out.append(("neuron.decay", None))  # an explicit tau wins over a preset's leak
    return out


def base_config(args: argparse.Namespace) -> C.ExperimentConfig:
    from ..experiments.presets import load_config_file, load_preset

    if args.preset and args.config:
        raise UserError("give either --preset or --config, not both")
    if args.preset:
        return load_preset(args.preset)
    if args.config:
        return load_config_file(args.config)
    return C.ExperimentConfig()


def build_config(args: argparse.Namespace, base: C.ExperimentConfig | None = None) -> C.ExperimentConfig:
    cfg = base if base is not None else base_config(args)
    cfg = C.apply_overrides(cfg, flag_overrides(args))
    sets = [C.parse_assignment(text) for text in args.assignments]
    return C.apply_overrides(cfg, sets) if sets else cfg


def resumed_config(args: argparse.Namespace) -> C.ExperimentConfig:
    from ..experiments.logs import CONFIG
    from ..experiments.presets import read_yaml

    if args.out is None:
        raise UserError("--resume needs --out: the folder of the run to continue")
    if args.preset or args.config:
        raise UserError("--resume takes the run's own config from its config.yaml; drop --preset/--config")
    path = Path(args.out) / CONFIG
    if not path.is_file():
        raise UserError(f"--resume: {args.out} is not a leanspike run folder (no {CONFIG})")
    return build_config(args, C.from_dict(read_yaml(path, "--resume"), f"{path}: "))


def run(args: argparse.Namespace) -> int:
    from ..trainer import train

    cfg = resumed_config(args) if args.resume else build_config(args)
    summary = train(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one report, from rank 0
        print(json.dumps(summary, indent=2))
    return 0
