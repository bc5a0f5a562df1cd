"""Temporal benchmarks: what BPTT's temporal routes are worth on tasks that need memory.

    python bench/temporal.py time                  # one iteration of every method on every task
    python bench/temporal.py run --phase all       # cost, scale, accuracy/cosine runs (resumable)
    python bench/temporal.py report                # tables and plots under docs/results/

Tasks (docs/temporal_tasks.md): ``rows`` = sequential Fashion-MNIST, one 28-pixel row per
step (T = 28), spiking MLP 28→128→128→10; ``saccades`` = Fashion-MNIST converted into
simulated saccade event streams (``python -m leanspike.data.saccades``), 8 count frames of
2×34×34 (``saccades28``: the same streams in 28 frames), small spiking CNN (2×2 average pool → conv 8 → pool → conv 16 → pool → linear). Every result is one JSON line in
docs/results/temporal_runs.jsonl keyed by its configuration; finished keys are skipped, so
an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from leanspike import BPTT, LIF, OTTT, SLTT, SLTTK, TBPTT, TruncatedLocalBPTT
from leanspike.engine import infer
from leanspike.analysis import gradient_similarity
from leanspike.measure import SavedTensorMeter
from leanspike.models.common import init_kaiming_fan_in

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
RUNS = RESULTS / "temporal_runs.jsonl"
TAUS = (1.1, 2.0, 4.0)
MAIN_TAU = 2.0
METHODS = ("bptt", "tbptt-T/4", "tbptt-1", "sltt", "sltt-k", "ttl", "ottt")


# ------------------------------------------------------------------------------------ tasks
@dataclass
class Task:
    name: str
    T: int
    train_x: torch.Tensor  # [N, T, ...] uint8
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    scale: float  # uint8 → float factor
    model: Callable[[float], nn.Module]  # tau -> fresh model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, ...]`` → float ``[T, B, ...]``."""
        return x.transpose(0, 1).float().mul_(self.scale).contiguous()


def kaiming(model: nn.Module) -> nn.Module:
    """Kaiming fan-in init: with PyTorch's default the hidden LIF layers of these small
    networks stay almost silent (0.2 % and 0 % of rows-MLP neurons fire) and barely learn."""
    init_kaiming_fan_in(model)
    return model


def rows_task(n_train: int, n_test: int) -> Task:
    from leanspike.data import build_dataset
    from leanspike.models.small import spiking_mlp

    tr, _ = build_dataset("seq-fashion-mnist", None, train=True, T=28)
    te, _ = build_dataset("seq-fashion-mnist", None, train=False, T=28)
    from leanspike.data.sequential import image_to_sequence

    def seqs(ds, n):
        return image_to_sequence(ds.images[:n]), ds.labels[:n]

    (xtr, ytr), (xte, yte) = seqs(tr, n_train), seqs(te, n_test)
    return Task("rows", 28, xtr, ytr, xte, yte, 1 / 255,
                lambda tau: kaiming(spiking_mlp(28, 10, hidden=(128, 128), neuron=partial(LIF, tau=tau))))


def saccades_task(n_train: int, n_test: int, T: int = 8, name: str = "saccades") -> Task:
    from leanspike.data import build_dataset
    from leanspike.models.small import spiking_cnn

    def frames(train: bool, n: int):
        ds, _ = build_dataset("fashion-saccades", None, train=train, T=T, integration="count")
        n = min(n, len(ds))
        # the converted folder is class-major; take an evenly spread subset
        index = torch.linspace(0, len(ds) - 1, n).round().long().tolist()
        x = torch.stack([torch.from_numpy(ds.frames(i)).clamp_(max=255).to(torch.uint8) for i in index])
        return x, torch.tensor([ds.labels[i] for i in index])

    (xtr, ytr), (xte, yte) = frames(True, n_train), frames(False, n_test)
    def model(tau: float) -> nn.Module:  # 2×2 average pooling first: 17×17 keeps the CPU budget
        cnn = kaiming(spiking_cnn(2, 10, 17, widths=(8, 16), neuron=partial(LIF, tau=tau)))
        return nn.Sequential(nn.AvgPool2d(2), *cnn)

    return Task(name, T, xtr, ytr, xte, yte, 1.0, model)


TASKS = {"rows": rows_task, "saccades": saccades_task,
         "saccades28": partial(saccades_task, T=28, name="saccades28")}


# ------------------------------------------------------------------------------------ methods
def make_method(name: str, T: int, seed: int):
    q = max(1, T // 4)
    if name == "bptt":
        return BPTT()
    if name == "tbptt-T/4":
        return TBPTT(q, update="interval")
    if name == "tbptt-1":
        return TBPTT(1, update="interval")
    if name == "sltt":
        return SLTT()
    if name in ("sltt-k", "sltt-k-scaleK"):
        return SLTTK(q, scale="K" if name.endswith("scaleK") else "T",
                     generator=torch.Generator().manual_seed(1000 + seed))
    if name == "ttl":
        return TruncatedLocalBPTT(q, 1, seed=seed)
    if name == "ottt":
        return OTTT()
    raise ValueError(f"unknown method {name!r}")


def describe(name: str, T: int) -> str:
    q = max(1, T // 4)
    return {"bptt": "BPTT", "tbptt-T/4": f"TBPTT(k={q}, interval)", "tbptt-1": "TBPTT(k=1, interval)",
            "sltt": "SLTT", "sltt-k": f"SLTT-K(K={q}, scale=T)", "sltt-k-scaleK": f"SLTT-K(K={q}, scale=K)",
            "ttl": f"TTL(k={q}, n=1)", "ottt": "OTTT"}[name]


# ------------------------------------------------------------------------------------ helpers
def weight_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine of two gradient dicts, per weight tensor (conv/linear, ndim ≥ 2), averaged."""
    cos = [torch.nn.functional.cosine_similarity(a[n].flatten().double(), b[n].flatten().double(), dim=0).item()
           for n in a if a[n].dim() >= 2 and not n.startswith("_method")]
    return sum(cos) / len(cos)


def grad_norm(g: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for n, v in g.items() if not n.startswith("_method")))


def bptt_vs_spatial(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-layer and mean cosine between BPTT and SLTT gradients at the same weights on the
    same batch (leanspike.analysis; batch-norm statistics are restored afterwards)."""
    return gradient_similarity(model, x, y, check_loss=False).as_dict()


def accuracy(task: Task, model: nn.Module, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for a in range(0, len(task.test_x), batch):
        out = infer(model, task.inputs(task.test_x[a:a + batch]))
        correct += int((out.argmax(1) == task.test_y[a:a + batch]).sum())
    model.train()
    return correct / len(task.test_x)


def done_keys() -> set[str]:
    if not RUNS.is_file():
        return set()
    return {json.loads(line)["key"] for line in RUNS.read_text().splitlines() if line.strip()}


def record(row: dict) -> None:
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with open(RUNS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(json.dumps({k: v for k, v in row.items() if k not in ("cosine", "loss_curve")}), flush=True)


# ------------------------------------------------------------------------------------ phases
def train_run(task: Task, method_name: str, tau: float, seed: int, args, cosine_every: int = 0) -> dict:
    torch.manual_seed(seed)
    model = task.model(tau)
    method = make_method(method_name, task.T, seed)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(task.train_x)
    probe = task.inputs(task.test_x[:args.batch]), task.test_y[:args.batch]
    times, cosine, losses, it = [], [], [], 0
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=gen)
        for a in range(0, n - args.batch + 1, args.batch):
            idx = order[a:a + args.batch]
            if cosine_every and it % cosine_every == 0:
                cosine.append([it, bptt_vs_spatial(model, *probe)])
            x, y = task.inputs(task.train_x[idx]), task.train_y[idx]
            t0 = time.perf_counter()
            res = method.train_step(model, x, y, optimizer)
            times.append(time.perf_counter() - t0)
            losses.append(res.loss)
            it += 1
    if cosine_every:
        cosine.append([it, bptt_vs_spatial(model, *probe)])
    acc = accuracy(task, model)
    return {"accuracy": acc, "iterations": it, "s_per_iter_median": statistics.median(times[2:] or times),
            "cosine": cosine, "loss_curve": [sum(losses[i:i + 10]) / len(losses[i:i + 10])
                                             for i in range(0, len(losses), 10)]}


def cost_pass(task: Task, args, methods=METHODS, tau: float = MAIN_TAU, rounds: int = 5) -> list[dict]:
    """Saved-activation peak and time per iteration, methods interleaved in one process."""
    x, y = task.inputs(task.train_x[:args.batch]), task.train_y[:args.batch]
    state = {}
    for name in methods:
        torch.manual_seed(0)
        model = task.model(tau)
        method = make_method(name, task.T, 0)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        method.train_step(model, x, y, opt)  # warm-up; builds TTL's classifiers
        heads = list(getattr(method, "heads", None) or [])
        with SavedTensorMeter(exclude=[model, *heads, x]) as meter:
            method.train_step(model, x, y, opt)
        state[name] = (model, method, opt, meter.peak_bytes, [])
    for _ in range(rounds):
        for name in methods:
            model, method, opt, _, times = state[name]
            t0 = time.perf_counter()
            method.train_step(model, x, y, opt)
            times.append(time.perf_counter() - t0)
    return [{"method": n, "saved_bytes": s[3], "s_per_iter": statistics.median(s[4])} for n, s in state.items()]


def sltt_k_scale(task: Task, args, tau: float = MAIN_TAU, draws: int = 20) -> dict:
    """‖g(SLTT-K)‖ / ‖g(SLTT)‖ and their cosine at init, both scales, over ``draws`` step draws."""
    torch.manual_seed(0)
    model = task.model(tau)
    x, y = task.inputs(task.train_x[:args.batch]), task.train_y[:args.batch]
    full = SLTT().compute_gradients(copy.deepcopy(model), x, y)
    out = {}
    for scale in ("T", "K"):
        method = SLTTK(max(1, task.T // 4), scale=scale, generator=torch.Generator().manual_seed(7))
        ratios, coss, mean = [], [], None
        for _ in range(draws):
            g = method.compute_gradients(copy.deepcopy(model), x, y)
            ratios.append(grad_norm(g) / grad_norm(full))
            coss.append(weight_cosine(g, full))
            mean = g if mean is None else {k: mean[k] + g[k] for k in g}
        mean = {k: v / draws for k, v in mean.items()}
        out[scale] = {"norm_ratio_mean": statistics.mean(ratios), "norm_ratio_std": statistics.pstdev(ratios),
                      "cosine_mean": statistics.mean(coss), "mean_grad_norm_ratio": grad_norm(mean) / grad_norm(full)}
    return out


def cmd_time(args) -> int:
    for tname in args.tasks:
        task = TASKS[tname](args.batch * 3, args.batch)
        for row in cost_pass(task, args, rounds=2):
            print(tname, row, flush=True)
    return 0


def cmd_run(args) -> int:
    done = done_keys()
    import leanspike

    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "leanspike": str(Path(leanspike.__file__).parent)}
    phases = ("cost", "scale", "main", "other", "scaleK") if args.phase == "all" else (args.phase,)
    if args.phase == "custom" and not args.tag:
        raise SystemExit("--phase custom needs --tag (it names these runs' keys)")
    for tname in args.tasks:
        task = TASKS[tname](args.n_train, args.n_test)
        setup = {"task": tname, "T": task.T, "n_train": len(task.train_x), "n_test": len(task.test_x),
                 "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "optimizer": args.optimizer,
                 "tag": args.tag or "main"}
        for phase in phases:
            if phase == "cost" and f"cost/{tname}" not in done:
                record({"key": f"cost/{tname}", "kind": "cost", **setup, "tau": MAIN_TAU, **env,
                        "rows": cost_pass(task, args)})
            if phase == "scale" and f"scale/{tname}" not in done:
                record({"key": f"scale/{tname}", "kind": "scale", **setup, "tau": MAIN_TAU,
                        "scales": sltt_k_scale(task, args)})
            jobs = []
            if phase == "main":
                jobs = [(m, MAIN_TAU, s) for s in range(args.seeds) for m in METHODS]
            elif phase == "other":
                jobs = [(m, tau, s) for s in range(args.seeds) for tau in TAUS if tau != MAIN_TAU for m in METHODS]
            elif phase == "scaleK":
                jobs = [("sltt-k-scaleK", MAIN_TAU, s) for s in range(args.seeds)]
            elif phase == "custom":
                jobs = [(m, tau, s) for tau in args.taus for s in range(args.seeds) for m in args.methods]
            for m, tau, seed in jobs:
                key = f"{'train' if phase != 'custom' else args.tag}/{tname}/{m}/tau={tau}/seed={seed}"
                if key in done:
                    continue
                t0 = time.time()
                res = train_run(task, m, tau, seed, args, cosine_every=args.cosine_every if m == "bptt" else 0)
                record({"key": key, "kind": "train", **setup, "method": m, "label": describe(m, task.T),
                        "tau": tau, "seed": seed, "wall_s": time.time() - t0, **env, **res})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("time", "run", "report"))
    p.add_argument("--phase", default="all", choices=("all", "cost", "scale", "main", "other", "scaleK", "custom"))
    p.add_argument("--tag", default="", help="custom phase: a name for these runs (part of their keys)")
    p.add_argument("--methods", default=",".join(METHODS), help="custom phase: methods")
    p.add_argument("--taus", default=str(MAIN_TAU), help="custom phase: comma-separated τ values")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--tasks", default="rows,saccades")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cosine-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.tasks = args.tasks.split(",")
    args.methods = args.methods.split(",")
    args.taus = [float(t) for t in args.taus.split(",")]
    torch.set_num_threads(args.threads)
    if args.command == "time":
        return cmd_time(args)
    if args.command == "run":
        return cmd_run(args)
    sys.path.insert(0, str(Path(__file__).parent))
    from temporal_report import report  # bench/temporal_report.py

    return report()


if __name__ == "__main__":
    sys.exit(main())
