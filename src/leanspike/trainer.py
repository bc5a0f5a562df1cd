"""The training loop: build a run from a config, train, evaluate, measure, survive faults.

Everything that differs between methods lives in the method's schedule, so this file
only moves batches, keeps metrics and writes results. A run with a results folder
(``out``) leaves there:

- ``config.yaml``: the resolved config (re-runs it exactly), ``environment.json``;
- ``metrics.jsonl`` / ``metrics.csv`` (one row per finished epoch), TensorBoard events
  when installed;
- ``checkpoint.pt``: written atomically after every epoch and when SIGINT/SIGTERM
  arrives (then mid-epoch, after the running batch); ``resume=True`` continues from it;
- ``summary.json`` once the run has finished.

Reproducibility: every source of randomness is either seeded from ``seed`` or stored in
the checkpoint (torch's global RNG, the DataLoader generator, the SLTT-K step
generator; the local method's classifiers are saved with the weights), so on CPU a
run killed at any point and resumed ends with the same weights and metrics as one
that never stopped. A NaN or infinite loss stops the run with a one-line error and
leaves the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, Subset

from . import distributed as dist_utils
from .checkpoint import (FILENAME, atomic_write_text, checkpoint_path, generator_state, load_checkpoint,
                         remove_stale_temps, rng_state, save_checkpoint, set_generator_state, set_rng_state,
                         state_mismatch)
from .engine import infer
from .errors import UserError
from .experiments import config as C
from .experiments.build import (DataBundle, build_method, build_model, build_optimizer, build_scheduler,
                                load_data)
from .experiments.logs import CONFIG, ENVIRONMENT, SUMMARY, MetricsLog, environment, write_json
from .measure import SavedTensorMeter, cuda_peak_bytes, peak_rss_bytes, reset_cuda_peak, reset_peak_rss
from .methods import Method, SLTTK, TruncatedLocalBPTT
from .neuron import compiled_lif
from .state import reset_states

METHOD_NAMES = C.METHODS
ExperimentConfig = C.ExperimentConfig

#: fields a resumed run may change (where data lives, how it is loaded, where it runs)
RESUMABLE_CHANGES = ("data.root", "data.workers", "data.test_batch_size", "device", "tensorboard", "init_from",
                     "requires_init")
#: per-epoch row keys that measure time, not learning (left out of reproducibility checks)
TIMING_KEYS = ("epoch_time_s", "samples_per_s")


@dataclass
class TrainConfig:
    """A flat config for quick use from Python (``leanspike demo`` uses it).

    ``extra`` holds dotted overrides of the full :class:`ExperimentConfig`
    (e.g. ``{"optimizer.name": "adam"}``).
    """

    dataset: str = "digits"
    data_root: str | None = None
    model: str = "spiking_cnn"
    method: str = "bptt"
    T: int = 4
    k: int | None = None
    K: int | None = None
    n: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "cosine"
    seed: int = 0
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "triangle"
    loss: str = "ce"
    out: str | None = None
    max_batches: int | None = None  # per epoch; for smoke runs
    extra: dict[str, Any] = field(default_factory=dict)

    def to_experiment(self) -> ExperimentConfig:
        cfg = C.ExperimentConfig(
            data=C.DataConfig(name=self.dataset, root=self.data_root),
            model=C.ModelConfig(name=self.model),
            method=C.MethodConfig(name=self.method, k=self.k, K=self.K, n=self.n),
            neuron=C.NeuronConfig(tau=self.tau, v_threshold=self.v_threshold, surrogate=self.surrogate),
            loss=C.LossConfig(name=self.loss),
            optimizer=C.OptimizerConfig(name=self.optimizer, lr=self.lr, momentum=self.momentum,
                                        weight_decay=self.weight_decay),
            schedule=C.ScheduleConfig(name=self.schedule),
            T=self.T, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, max_batches=self.max_batches)
        cfg = C.from_dict(C.to_dict(cfg))  # type-checks the flat fields
        return C.apply_overrides(cfg, self.extra) if self.extra else cfg

    def validate(self) -> None:
        C.validate(self.to_experiment())


# ------------------------------------------------------------------------------ helpers
class _ResumableBatches(Sampler[list[int]]):
    """Batches of an epoch; ``skip`` drops the first ones once (resuming mid-epoch)
    without loading them, so no data transform consumes randomness for them."""

    def __init__(self, batches: BatchSampler) -> None:
        self.batches = batches
        self.skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        it = iter(self.batches)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.batches)


class _StopFlag:
    """SIGINT/SIGTERM → finish the running batch, checkpoint, stop. A second SIGINT
    stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopFlag":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint."""


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _resolve_device(cfg: ExperimentConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {cfg.device}: CUDA is not available on this machine")
    if cfg.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def _to_device(module: nn.Module, device: torch.device) -> None:
    """``module.to(device)``, skipped when everything already lives there (the usual CPU case)."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device != device for t in tensors):
        module.to(device)


def _check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if resume:
        if not (out / CONFIG).is_file():
            raise UserError(f"--resume: {out} is not a leanspike run folder (no {CONFIG})")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out}: directory exists and is not empty; choose a new one or pass --resume")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, T: int, encode, device: torch.device | None = None,
             autocast=contextlib.nullcontext) -> tuple[int, int]:
    """(correct, total) over ``loader``; inference over all T steps, state reset per batch."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            pred = infer(model, encode(x, T)).argmax(1)
        correct += int((pred == y).sum())
        total += len(y)
    return correct, total


# --------------------------------------------------------------------------------- run
class _Run:
    """One training run: built objects, their state, and the epoch loop."""

    def __init__(self, cfg: ExperimentConfig, out: Path | None, resume: bool, progress: bool,
                 metered_iterations: int) -> None:
        self.cfg, self.out, self.progress, self.metered = cfg, out, progress, metered_iterations
        C.validate(cfg)
        if resume and out is None:
            raise UserError("--resume needs --out: the folder of the run to continue")
        self.dist = dist_utils.init_from_env(use_cuda=cfg.device != "cpu" and torch.cuda.is_available())
        self.rank = self.dist.rank if self.dist else 0
        self.world = self.dist.world_size if self.dist else 1
        self.main = self.rank == 0
        self.device = _resolve_device(cfg, self.dist.local_rank if self.dist else 0)
        self._agree(lambda: out is None or _check_out_dir(out, resume))  # collective: every rank calls it
        ckpt = None
        if resume:
            if self.main:  # a run killed while writing a file left its temp file behind
                remove_stale_temps(out)  # type: ignore[arg-type]
            path = out / FILENAME  # type: ignore[operator]
            if path.exists():
                ckpt = load_checkpoint(path, "--resume checkpoint")
                saved = ckpt.get("config", {})
                diffs = [d for d in C.differences(C.to_dict(cfg), saved) if d not in RESUMABLE_CHANGES]
                if diffs:
                    theirs = _dotted(saved, diffs[0])
                    raise UserError(f"--resume: config field {diffs[0]} is {C.get_path(cfg, diffs[0])!r} here but "
                                    f"{theirs!r} in the run's checkpoint; resume with the run's own config")
                if ckpt.get("world_size", 1) != self.world:
                    raise UserError(f"--resume: the run used {ckpt.get('world_size')} processes, this one "
                                    f"{self.world}; resume with the same number")
        self._build()
        self._state_from(ckpt)

    def _agree(self, check) -> None:
        """Run a check on rank 0 and raise the same error on every rank."""
        error = None
        if self.main:
            try:
                check()
            except UserError as exc:
                error = str(exc)
        if self.dist:
            error = dist_utils.broadcast_object(error)
        if error is not None:
            raise UserError(error)

    # -- building ----------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.data: DataBundle = load_data(cfg)
        self.model = build_model(cfg, self.data)
        self.method: Method = build_method(cfg, self.rank)
        self._probe()
        if cfg.init_from:
            self._load_init(cfg.init_from)
        heads = self._heads()
        for module in (self.model, *heads):
            _to_device(module, self.device)
        if self.dist:
            dist_utils.broadcast_tensors(dist_utils.module_tensors(self.model, *heads), src=0)
            self.method.grad_sync = dist_utils.GradAllReduce(self._parameters, self.world)
            if self.rank:
                torch.manual_seed(cfg.seed + 7919 * self.rank)  # own dropout masks per rank
        self.log: MetricsLog | None = None
        self.metered_done = 0  # iterations measured by the saved-tensor meter in this process
        self.optimizer = build_optimizer(cfg, self._parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer)
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
        self.use_amp = cfg.amp and cuda
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp and self.amp_dtype == torch.float16 else None
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)
        if self.dist:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler: Sampler = DistributedSampler(self.data.train, num_replicas=self.world, rank=self.rank,
                                                       shuffle=True, seed=cfg.seed)
        else:
            self.sampler = RandomSampler(self.data.train, generator=self.loader_gen)
        self.batches = _ResumableBatches(BatchSampler(self.sampler, cfg.batch_size, drop_last=False))
        self.train_loader = DataLoader(self.data.train, batch_sampler=self.batches, num_workers=cfg.data.workers,
                                       generator=self.loader_gen, pin_memory=cuda)
        test = self.data.test
        if self.dist:
            test = Subset(test, list(range(self.rank, len(test), self.world)))
        self.test_loader = DataLoader(test, batch_size=cfg.data.test_batch_size, shuffle=False,
                                      num_workers=cfg.data.workers, pin_memory=cuda,
                                      generator=torch.Generator().manual_seed(0))

    def _parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.method.extra_parameters()]

    def _heads(self) -> list[nn.Module]:
        return list(self.method.heads or []) if isinstance(self.method, TruncatedLocalBPTT) else []

    def _probe(self) -> None:
        """One sample through the model before anything is written: a model that does not
        fit the data, or local blocks that do not fit the model, fail here in one line."""
        cfg, model = self.cfg, self.model
        try:
            x0 = self.data.train[0][0]
        except Exception as exc:  # a reader's own error on the first sample
            raise UserError(f"dataset {cfg.data.name}: cannot read the first training sample: "
                            f"{_one_line(exc)}") from None
        inputs = self.data.encode(x0.unsqueeze(0), cfg.T, torch.Generator().manual_seed(0))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(inputs[0])
            if out.dim() != 2 or out.shape[1] != self.data.num_classes:
                raise ValueError(f"output shaped {tuple(out.shape)}, expected [B, {self.data.num_classes}]")
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"input shaped {tuple(inputs.shape[1:])} does not fit model {cfg.model.name}: "
                            f"{_one_line(exc)}") from None
        finally:
            reset_states(model)
            model.train(was_training)
        if isinstance(self.method, TruncatedLocalBPTT):
            try:
                self.method.engine(model, inputs)  # builds the local classifiers now, from the seed
            except ValueError as exc:
                raise UserError(f"--n {cfg.method.n} does not fit model {cfg.model.name}: {_one_line(exc)}") from None

    def _load_init(self, source: str) -> None:
        ckpt = load_checkpoint(source, "--init-from")
        problem = state_mismatch(self.model, ckpt["model"])
        if problem is not None:
            raise UserError(f"--init-from {checkpoint_path(source)} does not fit model {self.cfg.model.name}: "
                            f"{problem}")
        try:
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError, ValueError) as exc:
            raise UserError(f"--init-from {checkpoint_path(source)} does not load into model "
                            f"{self.cfg.model.name}: {_one_line(exc)}") from None

    # -- state --------------------------------------------------------------------------
    def _state_from(self, ckpt: dict[str, Any] | None) -> None:
        self.epoch = 0  # finished epochs
        self.batch = 0  # finished batches of the running epoch
        self.rows: list[dict[str, Any]] = []
        self.accum = {"seen": 0.0, "correct": 0.0, "loss_sum": 0.0}
        self.peak_saved = 0
        self.iter_times: list[float] = []
        self.epoch_start_loader: torch.Tensor = self.loader_gen.get_state()
        self.resumed_from: int | None = None
        self.prior_peak_rss = 0
        if ckpt is None:
            return
        problem = state_mismatch(self.model, ckpt["model"])
        if problem is not None:
            raise UserError(f"--resume: the checkpoint does not fit model {self.cfg.model.name}: {problem}")
        try:
            self.model.load_state_dict(ckpt["model"])
            heads = self._heads()
            for h, sd in zip(heads, ckpt.get("heads") or []):
                h.load_state_dict(sd)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            rngs = ckpt["rng"]
            set_rng_state(rngs[self.rank] if isinstance(rngs, list) else rngs)
            self.epoch_start_loader = ckpt["loader"]
            self.loader_gen.set_state(ckpt["loader"])
            if isinstance(self.method, SLTTK):
                gens = ckpt.get("method_rng")
                set_generator_state(self.method.generator, gens[self.rank] if isinstance(gens, list) else gens)
            self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
            self.rows = list(ckpt["metrics"])
            self.accum = dict(ckpt["accum"])
            self.peak_saved = int(ckpt["peak_saved_bytes"])
            self.iter_times = list(ckpt.get("iter_times", []))
            self.prior_peak_rss = int(ckpt.get("peak_rss_bytes", 0))
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
            missing = f"no field {exc}" if isinstance(exc, KeyError) else _one_line(exc)
            raise UserError(f"--resume: checkpoint does not fit this run: {missing}") from None
        self.resumed_from = self.epoch
        self.batches.skip = self.batch

    def _gather(self, value: Any) -> Any:
        """Every rank's ``value`` as a list (rank order); the value itself on one process."""
        if not self.dist:
            return value
        import torch.distributed as dist

        box: list[Any] = [None] * self.world
        dist.all_gather_object(box, value)
        return box

    def _checkpoint(self) -> None:
        rngs = self._gather(rng_state())
        method_rng = self._gather(generator_state(self.method.generator)) if isinstance(self.method, SLTTK) else None
        if not self.main or self.out is None:
            return
        heads = self._heads()
        save_checkpoint(self.out / FILENAME, {
            "epoch": self.epoch, "batch": self.batch,
            "model": self.model.state_dict(),
            "heads": [h.state_dict() for h in heads] if heads else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            # mid-epoch: the epoch's start state, so the resumed run redraws the same shuffle and
            # skips the finished batches; at 0 or after the epoch's last batch: the state now
            # (iterating the loader draws from it, so a finished epoch must not redraw anything)
            "rng": rngs, "loader": (self.epoch_start_loader if 0 < self.batch < self._batches_per_epoch()
                                    else self.loader_gen.get_state()),
            "method_rng": method_rng,
            "metrics": self.rows, "accum": self.accum,
            "peak_saved_bytes": self.peak_saved, "iter_times": self.iter_times[-200:],
            "peak_rss_bytes": max(peak_rss_bytes(), self.prior_peak_rss),
            "config": C.to_dict(self.cfg), "world_size": self.world,
        })

    # -- the loop -----------------------------------------------------------------------
    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _batches_per_epoch(self) -> int:
        n = len(self.batches)
        return min(n, self.cfg.max_batches) if self.cfg.max_batches else n

    def _sync_flags(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        if not self.dist:
            return stop, bad
        s, b = dist_utils.all_reduce_sum([float(stop), float(bad)], self.device)
        return s > 0, b > 0

    def _interrupt(self, flag: _StopFlag, where: str) -> None:
        name = signal.Signals(flag.signum).name if flag.signum else "signal"
        if self.main:
            saved = f"checkpoint saved to {self.out / FILENAME}; continue with --resume --out {self.out}" \
                if self.out is not None else "no --out, nothing saved"
            print(f"interrupted by {name} {where}: {saved}", file=sys.stderr, flush=True)
        raise Interrupted()

    def train_epoch(self, flag: _StopFlag) -> None:
        cfg, model, method = self.cfg, self.model, self.method
        epoch = self.epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.batch == 0:
            self.epoch_start_loader = self.loader_gen.get_state()
            self.accum = {"seen": 0.0, "correct": 0.0, "loss_sum": 0.0}
        total = self._batches_per_epoch()
        bar = None
        if self.progress and self.main:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (a cluster job's log would fill
            # with redrawn lines); the epoch lines below are written either way
            bar = tqdm(total=total, initial=self.batch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)
        started = time.perf_counter()
        seen_at_start = self.accum["seen"]
        cuda = self.device.type == "cuda"
        model.train()
        # islice: a capped epoch (max_batches) loads no batch beyond the cap. Resumed after the
        # epoch's last batch: load none (even creating the loader's iterator draws from
        # loader_gen, which the checkpoint saved as it stood after this epoch's draws)
        if 0 < total <= self.batch:
            self.batches.skip = 0
            batches = iter(())
        else:
            batches = itertools.islice(self.train_loader, max(total - self.batch, 0))
        ran = False
        for b, (x, y) in enumerate(batches, start=self.batch):
            ran = True
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            inputs = self.data.encode(x, cfg.T)
            if cuda:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            metered = self.metered_done < self.metered
            with self._autocast():
                if metered:
                    with SavedTensorMeter(exclude=[model, *self._heads(), inputs]) as meter:
                        result = method.train_step(model, inputs, y, self.optimizer, self.scaler)
                    self.peak_saved = max(self.peak_saved, meter.peak_bytes)
                    self.metered_done += 1
                else:
                    result = method.train_step(model, inputs, y, self.optimizer, self.scaler)
            if cuda:
                torch.cuda.synchronize(self.device)
            if not metered:
                self.iter_times.append(time.perf_counter() - t0)
                if len(self.iter_times) > 2000:  # the median of recent iterations is enough
                    del self.iter_times[:1000]
            stop, bad = self._sync_flags(flag.signum is not None, not math.isfinite(result.loss))
            if bad:
                kept = (f"the last good checkpoint ({self.out / FILENAME}) is kept"
                        if self.out is not None and (self.out / FILENAME).exists() else "no checkpoint was written")
                raise UserError(f"loss became {result.loss} at epoch {epoch + 1}, step {b + 1}; {kept}; "
                                f"lower the learning rate (--lr)")
            n = len(y)
            self.accum["seen"] += n
            self.accum["correct"] += int((result.predictions == y).sum())
            self.accum["loss_sum"] += result.loss * n
            self.batch = b + 1
            if bar is not None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update()
                bar.set_postfix(loss=f"{self.accum['loss_sum'] / self.accum['seen']:.4f}",
                                acc=f"{self.accum['correct'] / self.accum['seen']:.3f}",
                                samples_s=f"{(self.accum['seen'] - seen_at_start) / elapsed:.0f}")
            if stop:
                if bar is not None:
                    bar.close()
                self._checkpoint()
                self._interrupt(flag, f"at epoch {epoch + 1}, step {b + 1}")
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - started
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            if not ran:  # resumed at an epoch's end: the run stepped the optimizer, this process not yet
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        seen, correct, loss_sum = self.accum["seen"], self.accum["correct"], self.accum["loss_sum"]
        if self.dist:
            seen, correct, loss_sum = dist_utils.all_reduce_sum([seen, correct, loss_sum], self.device)
        test_acc = None
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            test_acc = self.evaluate()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "test_accuracy": test_acc, "lr": lr, "epoch_time_s": round(epoch_time, 4),
               "samples_per_s": round((self.accum["seen"] - seen_at_start) * self.world / max(epoch_time, 1e-9), 2)}
        self.rows.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self._checkpoint()
        if self.main and self.log is not None:
            self.log.write(self.rows)
        if self.progress and self.main:
            from tqdm import tqdm

            shown = "-" if test_acc is None else f"{test_acc:.4f}"
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}  train acc "
                       f"{row['train_accuracy']:.4f}  test acc {shown}  ({epoch_time:.1f} s)", file=sys.stderr)
        if flag.signum is not None:
            self._interrupt(flag, f"after epoch {epoch + 1}")

    def evaluate(self) -> float:
        if self.dist:
            dist_utils.broadcast_tensors([b for b in self.model.buffers() if b.is_floating_point()], src=0)
        correct, total = evaluate(self.model, self.test_loader, self.cfg.T, self.data.encode, self.device,
                                  self._autocast)
        if self.dist:
            correct, total = dist_utils.all_reduce_sum([correct, total], self.device)
        return correct / max(total, 1)

    def run(self) -> dict[str, Any]:
        cfg, out = self.cfg, self.out
        # the handlers go in before the run folder is written: a signal that arrives while it is
        # (config.yaml already there) stops after the first batch with a checkpoint, as later ones do
        with _StopFlag() as flag:
            if out is not None and self.main:
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / CONFIG, C.to_yaml(cfg))
                if not (out / ENVIRONMENT).exists():
                    write_json(out / ENVIRONMENT, environment(self.device, self.world,
                                                              self.dist.backend if self.dist else None))
                self.log = MetricsLog(out, cfg.tensorboard, first_epoch=self.epoch)
                self.log.write(self.rows)  # drops the rows of an epoch a crash cut short
            reset_peak_rss()
            if self.device.type == "cuda":
                reset_cuda_peak(self.device)
            start = time.perf_counter()
            try:
                while self.epoch < cfg.epochs:
                    self.train_epoch(flag)
            finally:
                if self.log is not None:
                    self.log.close()
        summary = self.summary(time.perf_counter() - start)
        if out is not None and self.main:
            write_json(out / SUMMARY, summary)
        return summary

    def summary(self, train_time: float) -> dict[str, Any]:
        cfg = self.cfg
        evaluated = [r["test_accuracy"] for r in self.rows if r["test_accuracy"] is not None]
        peak_rss = max(peak_rss_bytes(), self.prior_peak_rss)
        if self.dist:
            peak_rss = int(dist_utils.all_reduce_max(float(peak_rss), self.device))
        last = self.rows[-1] if self.rows else {}
        eff = C.effective(cfg)
        return {
            "name": cfg.name, "method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.data.name,
            "T": cfg.T, "k": eff["k"], "K": eff["K"], "n": eff["n"], "classifier": eff["classifier"],
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed, "world_size": self.world,
            "test_accuracy": evaluated[-1] if evaluated else None,
            "best_test_accuracy": max(evaluated) if evaluated else None,
            "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
            "peak_saved_bytes": self.peak_saved, "peak_rss_bytes": peak_rss,
            "cuda_peak_bytes": cuda_peak_bytes(self.device) if self.device.type == "cuda" else None,
            "s_per_iter": statistics.median(self.iter_times) if self.iter_times else None,
            "train_time_s": round(train_time, 3), "device": str(self.device),
            "resumed_from_epoch": self.resumed_from,
        }


def train(cfg: TrainConfig | ExperimentConfig, *, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, metered_iterations: int = 3) -> dict[str, Any]:
    """Train per ``cfg``; returns the summary (also written to ``out`` when given).

    With a :class:`TrainConfig`, ``out`` defaults to ``cfg.out``. ``resume=True``
    continues the run in ``out`` from its checkpoint (from scratch if it has none yet;
    a finished run's summary is returned as is). Under ``torchrun`` the run is
    data-parallel over the launched processes.
    """
    if isinstance(cfg, TrainConfig):
        out = cfg.out if out is None else out
        cfg = cfg.to_experiment()
    out_path = Path(out).expanduser() if out is not None else None
    if resume and out_path is not None and (out_path / SUMMARY).is_file():
        print(f"{out_path} holds a finished run; nothing to resume", file=sys.stderr)
        return _finished_summary(out_path / SUMMARY)
    owns_group = dist_utils.env_world_size() > 1 and not _dist_initialized()
    try:
        with compiled_lif(cfg.compile_lif):  # the config decides for the run, then the caller's setting again
            return _Run(cfg, out_path, resume, progress, metered_iterations).run()
    finally:
        if owns_group:
            dist_utils.shutdown()


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _finished_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise UserError(f"--resume: cannot read the finished run's {path}: {exc}") from None
    if not isinstance(summary, dict):
        raise UserError(f"--resume: {path} holds {type(summary).__name__}, expected a run summary (a JSON object)")
    return summary


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
