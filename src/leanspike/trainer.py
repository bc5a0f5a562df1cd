"""A plain training loop: build model, data and method from a config, train, evaluate, measure.

The loop is deliberately small: everything that differs between methods lives in the
method's schedule, so this file only moves batches, keeps metrics and writes results.
Results go to ``out/summary.json`` (written atomically) and ``out/metrics.jsonl``
(one complete line per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .engine import infer
from .errors import UserError
from .losses import make_loss
from .measure import SavedTensorMeter, peak_rss_bytes, reset_peak_rss
from .methods import BPTT, SLTT, SLTTK, TBPTT, Method
from .neuron import LIF
from .surrogate import make_surrogate

METHOD_NAMES = ("bptt", "tbptt", "sltt", "sltt-k")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_root: str | None = None
    model: str = "spiking_cnn"
    method: str = "bptt"
    T: int = 4
    k: int | None = None
    K: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "triangle"
    loss: str = "ce"
    out: str | None = None
    max_batches: int | None = None  # per epoch; for smoke runs
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHOD_NAMES:
            raise UserError(f"unknown method {self.method!r}; expected one of {', '.join(METHOD_NAMES)}")
        for name in ("T", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.method == "tbptt":
            if self.k is None:
                raise UserError("--method tbptt needs --k (interval length, 1 <= k <= T)")
            if not 1 <= self.k <= self.T:
                raise UserError(f"--k {self.k} is out of range: expected 1 <= k <= T = {self.T}")
        if self.method == "sltt-k":
            if self.K is None:
                raise UserError("--method sltt-k needs --K (steps with backward, 1 <= K <= T)")
            if not 1 <= self.K <= self.T:
                raise UserError(f"--K {self.K} is out of range: expected 1 <= K <= T = {self.T}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.tau < 1:
            raise UserError(f"--tau must be >= 1 (decay = 1 - 1/tau), got {self.tau}")


def build_method(cfg: TrainConfig) -> Method:
    try:
        loss = make_loss(cfg.loss)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.method == "bptt":
        return BPTT(loss)
    if cfg.method == "tbptt":
        return TBPTT(int(cfg.k), loss)  # type: ignore[arg-type]
    if cfg.method == "sltt":
        return SLTT(loss)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return SLTTK(int(cfg.K), loss, generator=gen)  # type: ignore[arg-type]


def neuron_factory(cfg: TrainConfig) -> Callable[[], nn.Module]:
    try:
        surrogate = make_surrogate(cfg.surrogate, v_threshold=cfg.v_threshold)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return partial(LIF, tau=cfg.tau, v_threshold=cfg.v_threshold, surrogate=surrogate)


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    in_channels: int
    input_size: tuple[int, int]
    num_classes: int
    encode: Callable[[torch.Tensor, int], torch.Tensor]  # [B, ...] batch -> [T, B, ...]


def repeat_over_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct encoding: the same static input at every step."""
    return x.unsqueeze(0).expand(T, *x.shape)


def load_data(cfg: TrainConfig) -> DataBundle:
    if cfg.dataset == "digits":
        from .data.builtin import load_digits_split

        train, test = load_digits_split(seed=0)
        return DataBundle(train, test, 1, (8, 8), 10, repeat_over_time)
    try:
        from .data import build_dataset  # type: ignore[attr-defined]
    except ImportError:
        raise UserError(f"unknown dataset {cfg.dataset!r}; expected digits") from None
    train, info = build_dataset(cfg.dataset, cfg.data_root, train=True, T=cfg.T)
    test, _ = build_dataset(cfg.dataset, cfg.data_root, train=False, T=cfg.T)
    from .data import to_time_major  # type: ignore[attr-defined]

    return DataBundle(train, test, info.in_channels, tuple(info.input_size), info.num_classes,
                      lambda x, T: to_time_major(x, T, info.encoding))


def build_model(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    neuron = neuron_factory(cfg)
    try:
        from .models.registry import build_model as registry_build  # type: ignore[import-not-found]
    except ImportError:
        registry_build = None
    if registry_build is not None:
        try:
            return registry_build(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes,
                                  input_size=data.input_size, neuron=neuron)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    from .models.small import spiking_cnn

    if cfg.model != "spiking_cnn":
        raise UserError(f"unknown model {cfg.model!r}; expected spiking_cnn")
    return spiking_cnn(data.in_channels, data.num_classes, data.input_size, neuron=neuron)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_out_dir(out: str | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--out {out}: directory exists and is not empty; choose a new one")
    return path


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, T: int, encode) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = infer(model, encode(x, T)).argmax(1)
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train(cfg: TrainConfig, progress: bool = True, metered_iterations: int = 3) -> dict[str, Any]:
    """Train per ``cfg``; returns the summary (also written to ``cfg.out`` when set)."""
    cfg.validate()
    out = prepare_out_dir(cfg.out)
    method = build_method(cfg)
    try:
        method.validate(cfg.T)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=False)
    test_loader = DataLoader(data.test, batch_size=256)

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    reset_peak_rss()
    peak_saved = 0
    iter_times: list[float] = []
    metrics: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * (cfg.max_batches or len(train_loader)), desc=cfg.method,
                   unit="it", leave=False, dynamic_ncols=True)
    iteration = 0
    for epoch in range(cfg.epochs):
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        for b, (x, y) in enumerate(train_loader):
            if cfg.max_batches is not None and b >= cfg.max_batches:
                break
            inputs = data.encode(x, cfg.T)
            start = time.perf_counter()
            if iteration < metered_iterations:
                with SavedTensorMeter(exclude=[model, inputs]) as meter:
                    result = method.train_step(model, inputs, y, optimizer)
                peak_saved = max(peak_saved, meter.peak_bytes)
            else:
                result = method.train_step(model, inputs, y, optimizer)
                iter_times.append(time.perf_counter() - start)
            if not torch.isfinite(torch.tensor(result.loss)):
                raise UserError(f"loss became {result.loss} at epoch {epoch + 1}, step {b + 1}; "
                                f"lower --lr")
            iteration += 1
            seen += len(y)
            correct += int((result.predictions == y).sum())
            loss_sum += result.loss * len(y)
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        scheduler.step()
        test_acc = evaluate(model, test_loader, cfg.T, data.encode)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
               "train_accuracy": correct / max(seen, 1), "test_accuracy": test_acc,
               "lr": optimizer.param_groups[0]["lr"]}
        metrics.append(row)
        if out is not None:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    if bar is not None:
        bar.close()
    summary = {
        "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset, "T": cfg.T, "k": cfg.k, "K": cfg.K,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "test_accuracy": metrics[-1]["test_accuracy"] if metrics else None,
        "peak_saved_bytes": peak_saved, "peak_rss_bytes": peak_rss_bytes(),
        "s_per_iter": statistics.median(iter_times) if iter_times else None,
        "config": dataclasses.asdict(cfg),
    }
    if out is not None:
        write_json_atomic(out / "summary.json", summary)
    return summary
