"""From a validated config to the objects a run needs: data, neuron, model, loss,
method, optimizer and learning-rate schedule.

Errors the user can fix (unknown dataset option, a model that does not fit the data,
a loss the method cannot use) come back as one-line :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import UserError
from ..losses import MeanOutputCE, PerStepCE, RateMSE, SLTTLoss, WindowLoss
from ..methods import BPTT, OTTT, SLTT, SLTTK, TBPTT, Method, TruncatedLocalBPTT
from ..neuron import LIF
from ..surrogate import make_surrogate
from .config import ExperimentConfig


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    in_channels: int
    input_size: tuple[int, int]
    num_classes: int
    encoding: str

    def encode(self, x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A loader batch → time-first ``[T, B, ...]``."""
        from ..data import to_time_major

        return to_time_major(x, T, self.encoding, generator)


def load_data(cfg: ExperimentConfig) -> DataBundle:
    from ..data import DATASET_NAMES, build_dataset

    name = cfg.data.name
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    try:
        train, info = build_dataset(name, cfg.data.root, train=True, T=cfg.T, **cfg.data.options)
        test, _ = build_dataset(name, cfg.data.root, train=False, T=cfg.T, **cfg.data.options)
    except UserError:
        raise
    except (ValueError, OSError, EOFError, TypeError) as exc:  # the readers' own complaints
        text = _one_line(exc)
        raise UserError(text if text.startswith(name) else f"dataset {name} (root {cfg.data.root}): {text}") from None
    for split, samples in (("training", train), ("test", test)):
        if len(samples) == 0:
            raise UserError(f"dataset {name} (root {cfg.data.root}): the {split} split is empty")
    return DataBundle(train, test, info.in_channels, tuple(info.input_size), info.num_classes, info.encoding)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def neuron_factory(cfg: ExperimentConfig) -> Callable[[], nn.Module]:
    n = cfg.neuron
    surrogate = make_surrogate(n.surrogate, width=n.surrogate_width, v_threshold=n.v_threshold)
    if n.decay is not None:
        return partial(LIF, decay=n.decay, v_threshold=n.v_threshold, reset=n.reset, surrogate=surrogate,
                       detach_reset=n.detach_reset)
    return partial(LIF, tau=n.tau, v_threshold=n.v_threshold, reset=n.reset, surrogate=surrogate,
                   detach_reset=n.detach_reset)


def build_model(cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
    from ..models.registry import MODELS
    from ..models.registry import build_model as registry_build

    if cfg.model.name not in MODELS:
        raise UserError(f"unknown model {cfg.model.name!r}; expected one of {', '.join(sorted(MODELS))}")
    try:
        return registry_build(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes,
                              input_size=data.input_size, neuron=neuron_factory(cfg), **cfg.model.options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"model {cfg.model.name} on {cfg.data.name} "
                        f"({data.in_channels}×{data.input_size[0]}×{data.input_size[1]}): {_one_line(exc)}") from None


def build_loss(cfg: ExperimentConfig) -> WindowLoss:
    name = cfg.loss.name
    if name == "ce":
        return PerStepCE()
    if name == "sltt":
        return SLTTLoss(cfg.loss.lambda_mse, cfg.loss.target, value=cfg.neuron.v_threshold)
    if name == "mean-ce":
        return MeanOutputCE()
    return RateMSE()


def build_method(cfg: ExperimentConfig, rank: int = 0) -> Method:
    """The training method; SLTT-K draws its steps from a generator seeded per run and rank."""
    m, loss = cfg.method, build_loss(cfg)
    if m.name == "bptt":
        method: Method = BPTT(loss)
    elif m.name == "tbptt":
        method = TBPTT(int(m.k), loss, update=m.update)  # type: ignore[arg-type]
    elif m.name == "sltt":
        method = SLTT(loss, steps_per_backward=int(m.steps_per_backward))
    elif m.name == "sltt-k":
        gen = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * rank)
        method = SLTTK(int(m.K), loss, scale=m.scale, generator=gen)  # type: ignore[arg-type]
    elif m.name == "ottt":
        method = OTTT(loss, update=m.update)
    else:
        method = TruncatedLocalBPTT(int(m.k), int(m.n), classifier=m.classifier, loss=loss,  # type: ignore[arg-type]
                                    seed=cfg.seed)
    try:
        method.validate(cfg.T)
    except ValueError as exc:
        raise UserError(f"method {m.name} with loss {cfg.loss.name}: {_one_line(exc)}") from None
    return method


def build_optimizer(cfg: ExperimentConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov and o.momentum > 0)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine annealing over ``epochs``, or ×gamma every step_size epochs."""
    s = cfg.schedule
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=s.eta_min)
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
