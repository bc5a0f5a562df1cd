"""leanspike against SpikingJelly and snnTorch: seconds per iteration, saved activations, RSS.

    python bench/peers.py                       # T = 2, 4, 6, 10; every setup; 2 threads
    python bench/peers.py --Ts 6 --rounds 3     # one T, three rounds (min of the medians)
    python bench/peers.py --device cuda         # the same on a GPU (writes peers_cuda.json)
    python bench/peers.py --device cuda --batch 128 --out bench/results/peers_cuda_b128.json
                                                # the SLTT paper's batch size (the targets assume 8)
    python bench/peers.py --Ts 6,10 --compile-lif --warmup 8 --out bench/results/peers_compiled.json
                                                # leanspike with its compiled CPU loops (opt-in)

The peers come from the optional ``bench`` extra (``pip install -e .[bench]`` and
``pip install --no-deps spikingjelly==2.0.0``); a setup whose library is missing is
reported as skipped. Every (setup, T) runs in a fresh Python process, so allocator
caches, thread pools and peak-RSS marks never leak from one setup into the next.

Model: the SLTT paper's VGG-11 with per-step batch norm and per-sequence dropout
(``build_model("vgg11", in_channels=2, num_classes=10, input_size=48)``), built with
the same layers and the same initial weights in every library, on ``[T, 8, 2, 48, 48]``
binary event frames. Neurons: LIF with decay 0.5 (τ = 2), V_th = 1, subtractive (soft)
reset, sigmoid surrogate with α = 4 — snnTorch's ``Leaky`` subtracts V_th without the decay
and detaches its reset, which it cannot be told otherwise: slightly different dynamics at the
same cost. Loss: the mean over t of per-step cross-entropy. Optimiser: SGD with momentum
0.9, one step per iteration. ``tests/test_peers_agree.py`` proves on a small net built by
this file's converters that SpikingJelly's BPTT and SLTT setups give leanspike's BPTT and
SLTT gradients, and snnTorch's gives leanspike's BPTT with snnTorch's reset.

Reported per setup: the median seconds per training iteration after warm-up (the
minimum over rounds of those medians: other jobs on a shared machine only ever add
time), the peak bytes saved for backward during one iteration
(:class:`leanspike.measure.SavedTensorMeter`, parameters, buffers and the input batch
excluded), the peak RSS increase over a memory pass of as many iterations run after the
timed ones (the heap handed back to the OS first, so that only live data is the
baseline; timing never follows that trim), and the achieved convolution GFLOP/s
(analytic: forward = 2·MACs per step, backward = 2× forward for every step that builds a
graph). The machine's fp32 matmul GFLOP/s is measured once. With ``--device cuda`` every
timed iteration is synchronised and the peak CUDA memory increase
(``torch.cuda.max_memory_allocated`` during the memory pass minus what was allocated
before it) is reported beside the RSS.
Writes bench/results/peers.json (peers_cuda.json on a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BATCH, CHANNELS, SIZE, CLASSES = 8, 2, 48, 10
DECAY, TAU, V_TH, ALPHA, DROPOUT = 0.5, 2.0, 1.0, 4.0, 0.3
FIRING = 0.2  # probability that an event-frame pixel is 1
LR, MOMENTUM = 1e-3, 0.9

#: setup -> (what it is, library)
SETUPS: dict[str, tuple[str, str]] = {
    "leanspike-bptt": ("leanspike BPTT", "leanspike"),
    "leanspike-sltt": ("leanspike SLTT", "leanspike"),
    "leanspike-sltt-k1": ("leanspike SLTT-K, K = 1", "leanspike"),
    "leanspike-sltt-khalf": ("leanspike SLTT-K, K = T/2", "leanspike"),
    "spikingjelly-bptt": ("SpikingJelly BPTT, multi-step, BN per step", "spikingjelly"),
    "spikingjelly-bptt-bn-tb": ("SpikingJelly BPTT, multi-step, BN over T·B (not per step)", "spikingjelly"),
    "spikingjelly-sltt": ("SpikingJelly SLTTLIFNode, online loop", "spikingjelly"),
    "snntorch-bptt": ("snnTorch BPTT", "snntorch"),
    "forward-only": ("leanspike forward-only inference over T (lower bound)", "leanspike"),
    # not in the default run (not among the setups): SLTT with several steps per backward
    "leanspike-sltt-c2": ("leanspike SLTT, 2 steps per backward (same gradient)", "leanspike"),
    "leanspike-sltt-cT": ("leanspike SLTT, all T steps in one backward (same gradient)", "leanspike"),
}
DEFAULT_SETUPS = [s for s in SETUPS if not s.startswith("leanspike-sltt-c")]


# ------------------------------------------------------------------------------ models
def leanspike_model() -> nn.Sequential:
    from leanspike import LIF, Sigmoid
    from leanspike.models.registry import build_model

    torch.manual_seed(0)
    neuron = partial(LIF, decay=DECAY, v_threshold=V_TH, reset="soft", surrogate=Sigmoid(ALPHA))
    return build_model("vgg11", in_channels=CHANNELS, num_classes=CLASSES, input_size=SIZE, neuron=neuron,
                       dropout=DROPOUT)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the parameters and batch-norm statistics of ``source`` (same layers, same order)."""
    def tensors(model: nn.Module) -> list[torch.Tensor]:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return [*model.parameters()] + [b for m in bns for b in m.buffers()]

    src, dst = tensors(source), tensors(target)
    if [t.shape for t in src] != [t.shape for t in dst]:
        raise RuntimeError("the peer's architecture differs from leanspike's VGG-11")
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.copy_(a)


def _vgg_layout(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The leanspike VGG-11 as a list of (kind, module) to rebuild in another library."""
    from leanspike.layers import SequenceDropout, StepBatchNorm2d
    from leanspike.neuron import LIF

    layout = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            layout.append(("conv", m))
        elif isinstance(m, StepBatchNorm2d):
            layout.append(("bn", m))
        elif isinstance(m, LIF):
            layout.append(("lif", m))
        elif isinstance(m, SequenceDropout):
            layout.append(("dropout", m))
        elif isinstance(m, nn.AvgPool2d):
            layout.append(("pool", m))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            layout.append(("adaptive", m))
        elif isinstance(m, nn.Flatten):
            layout.append(("flatten", m))
        elif isinstance(m, nn.Linear):
            layout.append(("linear", m))
        else:
            raise RuntimeError(f"unexpected layer {m}")
    return layout


def spikingjelly_model(reference: nn.Sequential, mode: str) -> nn.Sequential:
    """``mode``: "bptt" (multi-step, BN per step), "bptt-bn-tb" (BN over T·B) or "sltt" (single step)."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    step = "s" if mode == "sltt" else "m"
    layers: list[nn.Module] = []
    for kind, m in _vgg_layout(reference):
        if kind == "conv":
            layers.append(layer.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding,
                                       bias=m.bias is not None, step_mode=step))
        elif kind == "bn":
            if mode == "bptt":  # statistics of each step: run the single-step BN over t
                layers.append(layer.MultiStepContainer(layer.BatchNorm2d(m.num_features, step_mode="s")))
            else:
                layers.append(layer.BatchNorm2d(m.num_features, step_mode=step))
        elif kind == "lif":
            cls = neuron.SLTTLIFNode if mode == "sltt" else neuron.LIFNode
            kwargs = dict(tau=TAU, decay_input=False, v_threshold=V_TH, v_reset=None,
                          surrogate_function=surrogate.Sigmoid(alpha=ALPHA), step_mode=step)
            if mode != "sltt":
                kwargs["detach_reset"] = False
            layers.append(cls(**kwargs))
        elif kind == "dropout":
            layers.append(layer.Dropout(m.p, step_mode=step))
        elif kind == "pool":
            layers.append(layer.AvgPool2d(m.kernel_size, step_mode=step))
        elif kind == "adaptive":
            layers.append(layer.AdaptiveAvgPool2d(m.output_size, step_mode=step))
        elif kind == "flatten":
            layers.append(layer.Flatten(step_mode=step))
        else:
            layers.append(layer.Linear(m.in_features, m.out_features, step_mode=step))
    model = nn.Sequential(*layers)
    copy_weights(reference, model)
    return model


class _SequenceDropout(nn.Module):
    """Per-sequence dropout for the snnTorch model (snnTorch has none): mask drawn at the first step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.mask = p, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.mask is None:
            self.mask = F.dropout(torch.ones_like(x), self.p, training=True)
        return x * self.mask


def snntorch_model(reference: nn.Sequential) -> nn.Sequential:
    """snnTorch's Leaky (β = 0.5, subtractive reset, sigmoid slope 4) in the same VGG-11. Its
    reset subtracts V_th undecayed and is detached: leanspike's ``reset="soft-unleaked",
    detach_reset=True`` (tests/test_peers_agree.py)."""
    import snntorch
    from snntorch import surrogate

    layers: list[nn.Module] = []
    for kind, m in _vgg_layout(reference):
        if kind == "conv":
            layers.append(nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding,
                                    bias=m.bias is not None))
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(m.num_features))
        elif kind == "lif":
            layers.append(snntorch.Leaky(beta=DECAY, threshold=V_TH, spike_grad=surrogate.sigmoid(slope=ALPHA),
                                         init_hidden=True, reset_mechanism="subtract"))
        elif kind == "dropout":
            layers.append(_SequenceDropout(m.p))
        elif kind == "pool":
            layers.append(nn.AvgPool2d(m.kernel_size))
        elif kind == "adaptive":
            layers.append(nn.AdaptiveAvgPool2d(m.output_size))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        else:
            layers.append(nn.Linear(m.in_features, m.out_features))
    model = nn.Sequential(*layers)
    copy_weights(reference, model)
    return model


def snntorch_reset(model: nn.Module) -> None:
    import snntorch

    for m in model.modules():
        if isinstance(m, snntorch.Leaky):
            m.reset_mem()
        elif isinstance(m, _SequenceDropout):
            m.mask = None


# ------------------------------------------------------------------------------ iterations
def make_iteration(setup: str, T: int, x: torch.Tensor, y: torch.Tensor):
    """(model, one-iteration callable, number of steps that build a graph); the model lives
    on ``x``'s device."""
    reference = leanspike_model()
    if setup.startswith("leanspike-") or setup == "forward-only":
        from leanspike import BPTT, SLTT, SLTTK
        from leanspike.engine import infer

        model = reference.to(x.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        if setup == "forward-only":
            model.eval()
            return model, lambda: infer(model, x), 0
        gen = torch.Generator().manual_seed(0)
        method, graphs = {
            "leanspike-bptt": (BPTT(), T),
            "leanspike-sltt": (SLTT(), T),
            "leanspike-sltt-c2": (SLTT(steps_per_backward=2), T),
            "leanspike-sltt-cT": (SLTT(steps_per_backward=T), T),
            "leanspike-sltt-k1": (SLTTK(1, generator=gen), 1),
            "leanspike-sltt-khalf": (SLTTK(max(1, T // 2), generator=gen), max(1, T // 2)),
        }[setup]
        return model, lambda: method.train_step(model, x, y, optimizer), graphs

    if setup.startswith("spikingjelly-"):
        from spikingjelly.activation_based import functional

        mode = setup.removeprefix("spikingjelly-")
        model = spikingjelly_model(reference, mode).to(x.device)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        if mode == "sltt":
            def iteration():
                functional.reset_net(model)
                optimizer.zero_grad(set_to_none=True)
                for t in range(T):
                    out = model(x[t])
                    (F.cross_entropy(out, y) / T).backward()
                optimizer.step()
                functional.reset_net(model)
        else:
            def iteration():
                functional.reset_net(model)
                optimizer.zero_grad(set_to_none=True)
                out = model(x)
                F.cross_entropy(out.flatten(0, 1), y.repeat(T)).backward()
                optimizer.step()
                functional.reset_net(model)
        return model, iteration, T

    if setup == "snntorch-bptt":
        model = snntorch_model(reference).to(x.device)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def iteration():
            snntorch_reset(model)
            optimizer.zero_grad(set_to_none=True)
            out = torch.stack([model(x[t]) for t in range(T)])
            F.cross_entropy(out.flatten(0, 1), y.repeat(T)).backward()
            optimizer.step()
            snntorch_reset(model)
        return model, iteration, T
    raise ValueError(f"unknown setup {setup!r}")


def conv_macs_per_step(batch: int = BATCH) -> int:
    """Multiply-accumulates of every convolution for one time step of the VGG-11."""
    model = leanspike_model().eval()
    total = 0

    def hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(batch, CHANNELS, SIZE, SIZE))
    for h in handles:
        h.remove()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device = torch.device("cpu"), n: int = 2048, repeats: int = 5) -> float:
    if device.type == "cuda":
        n *= 4  # a 2048² product is over before a GPU is busy
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _release_free_memory() -> None:
    """Hand the allocator's free heap back to the OS (glibc), so that "RSS before" counts live data
    only and the peak increase measures an iteration's working set, whatever warm-up left cached."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(setup: str, T: int, warmup: int, iterations: int, device: torch.device, batch: int = BATCH,
           memory_iterations: int | None = None) -> dict:
    """One (setup, T) in this process: warm-up, one metered iteration (bytes saved for
    backward), ``iterations`` timed ones, then ``memory_iterations`` (default: as many)
    for the peak RSS and CUDA memory increases.

    The memory pass comes after the timed one because it starts by handing the free heap
    back to the OS (``malloc_trim``) so that its baseline counts live data only; timed
    right after that, the first iterations would also pay for faulting those pages in
    again, which is the measurement's cost, not the setup's (SLTT-K, K = 1 at T = 6: the
    first two iterations after the trim took 0.35-0.44 s, the rest 0.29-0.31 s)."""
    from leanspike.measure import SavedTensorMeter, current_rss_bytes, peak_rss_bytes, reset_peak_rss

    torch.manual_seed(0)
    x = (torch.rand(T, batch, CHANNELS, SIZE, SIZE) < FIRING).float().to(device)
    y = torch.randint(0, CLASSES, (batch,)).to(device)
    model, iteration, graphs = make_iteration(setup, T, x, y)
    for _ in range(warmup):
        iteration()
    with SavedTensorMeter(exclude=[model, x]) as meter:
        iteration()
    times = []
    for _ in range(iterations):
        _sync(device)
        start = time.perf_counter()
        iteration()
        _sync(device)
        times.append(time.perf_counter() - start)
    gc.collect()
    _release_free_memory()
    rss_before = current_rss_bytes()
    rss_reset = reset_peak_rss()
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    for _ in range(iterations if memory_iterations is None else memory_iterations):
        iteration()
    _sync(device)
    rss_increase = max(0, peak_rss_bytes() - rss_before) if rss_reset else None
    row = {"setup": setup, "T": T, "device": str(device), "times_s": times, "s_per_iter": statistics.median(times),
           "saved_bytes": meter.peak_bytes, "rss_increase_bytes": rss_increase, "graph_steps": graphs}
    if cuda:
        row["cuda_peak_increase_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_before
        row["gpu"] = torch.cuda.get_device_name(device)
    return row


# ------------------------------------------------------------------------------ driver
def available(library: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(library) is not None


def run_worker(setup: str, T: int, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", setup, "--T", str(T), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--device", args.device,
           "--batch", str(args.batch), "--memory-iterations", str(args.memory_iterations)] \
        + (["--compile-lif"] if args.compile_lif else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"setup": setup, "T": T, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


#: (name, numerator (setup, T, field), denominator, limit)
TARGETS = [
    ("leanspike BPTT time / SpikingJelly BPTT time (T=6)",
     ("leanspike-bptt", 6, "s_per_iter"), ("spikingjelly-bptt", 6, "s_per_iter"), 0.8),
    ("leanspike SLTT time / SpikingJelly SLTT-loop time (T=6)",
     ("leanspike-sltt", 6, "s_per_iter"), ("spikingjelly-sltt", 6, "s_per_iter"), 0.8),
    ("leanspike SLTT time / leanspike BPTT time (T=6)",
     ("leanspike-sltt", 6, "s_per_iter"), ("leanspike-bptt", 6, "s_per_iter"), 0.85),
    ("leanspike SLTT-K (K=1) time / leanspike BPTT time (T=6)",
     ("leanspike-sltt-k1", 6, "s_per_iter"), ("leanspike-bptt", 6, "s_per_iter"), 0.45),
    ("leanspike SLTT-K (K=1) time / forward-only time (T=6)",
     ("leanspike-sltt-k1", 6, "s_per_iter"), ("forward-only", 6, "s_per_iter"), 1.5),
    ("leanspike SLTT activation bytes, T=10 / T=2",
     ("leanspike-sltt", 10, "saved_bytes"), ("leanspike-sltt", 2, "saved_bytes"), 1.05),
    ("leanspike SLTT / leanspike BPTT activation bytes (T=10)",
     ("leanspike-sltt", 10, "saved_bytes"), ("leanspike-bptt", 10, "saved_bytes"), 0.12),
    ("leanspike BPTT / SpikingJelly BPTT activation bytes (T=10)",
     ("leanspike-bptt", 10, "saved_bytes"), ("spikingjelly-bptt", 10, "saved_bytes"), 0.6),
    ("leanspike BPTT / SpikingJelly BPTT peak RSS increase (T=10)",
     ("leanspike-bptt", 10, "rss_increase_bytes"), ("spikingjelly-bptt", 10, "rss_increase_bytes"), 0.6),
]


def evaluate_targets(rows: dict[tuple[str, int], dict], cuda: bool = False) -> list[dict]:
    """The issue's ratios; on a GPU the peak-RSS one compares peak CUDA memory increases."""
    out = []
    for name, (na, ta, fa), (nb, tb, fb), limit in TARGETS:
        if cuda and fa == "rss_increase_bytes":
            name, fa, fb = name.replace("peak RSS", "peak CUDA memory"), "cuda_peak_increase_bytes", "cuda_peak_increase_bytes"
        a = rows.get((na, ta), {}).get(fa)
        b = rows.get((nb, tb), {}).get(fb)
        value = _ratio(a, b)
        out.append({"target": name, "value": value, "limit": limit,
                    "met": None if value is None else value <= limit})
    return out


def format_table(rows: list[dict], Ts: list[int], setups: list[str], cuda: bool = False) -> str:
    head = "| setup | T | s/iter | conv GFLOP/s | saved for backward (MiB) | peak RSS increase (MiB) |"
    lines = [head + (" peak CUDA increase (MiB) |" if cuda else ""), "|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    by = {(r["setup"], r["T"]): r for r in rows}
    for setup in setups:
        for T in Ts:
            r = by.get((setup, T))
            if r is None:
                continue
            if "error" in r or "skipped" in r:
                lines.append(f"| {setup} | {T} | {r.get('error') or r.get('skipped')} | | | |" + (" |" if cuda else ""))
                continue
            rss = "n/a" if r["rss_increase_bytes"] is None else f"{r['rss_increase_bytes'] / 2**20:.0f}"
            line = (f"| {setup} | {T} | {r['s_per_iter']:.3f} | {r['conv_gflops']:.0f} | "
                    f"{r['saved_bytes'] / 2**20:.1f} | {rss} |")
            if cuda:
                line += f" {r['cuda_peak_increase_bytes'] / 2**20:.0f} |"
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--Ts", default="2,4,6,10", help="comma-separated numbers of time steps")
    p.add_argument("--setups", default=",".join(DEFAULT_SETUPS),
                   help=f"comma-separated setups (default: all but {', '.join(sorted(set(SETUPS) - set(DEFAULT_SETUPS)))})")
    p.add_argument("--rounds", type=int, default=1, help="run every (setup, T) this many times; keep the fastest")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per (setup, T)")
    p.add_argument("--memory-iterations", type=int, default=None,
                   help="iterations of the memory pass, after the timed ones (default: --iterations)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"samples per batch (default {BATCH}, the issue's setup; the targets assume it)")
    p.add_argument("--out", help="JSON file (default bench/results/peers.json, peers_cuda.json on cuda)")
    p.add_argument("--compile-lif", action="store_true",
                   help="leanspike's setups with leanspike.compile_lif() (CPU: LIF and norm + LIF loops compiled "
                        "by torch.compile; give a few more --warmup iterations: the first compiles)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch build sees no CUDA device")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.worker:
        if args.compile_lif and SETUPS[args.worker][1] == "leanspike":
            from leanspike import compile_lif

            compile_lif()
        print(json.dumps(worker(args.worker, args.T, args.warmup, args.iterations, device, args.batch,
                                args.memory_iterations)))
        return 0
    out = Path(args.out or Path(__file__).parent / "results" / ("peers_cuda.json" if cuda else "peers.json"))

    Ts = [int(t) for t in args.Ts.split(",")]
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        p.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    if args.batch < 1:
        p.error(f"--batch must be a positive integer, got {args.batch}")
    if args.memory_iterations is None:
        args.memory_iterations = args.iterations
    if min(args.iterations, args.memory_iterations) < 1 or args.warmup < 0:
        p.error("--iterations and --memory-iterations must be >= 1 and --warmup >= 0")
    gflops = matmul_gflops(device)  # after the checks: bad arguments fail before any measuring
    macs = conv_macs_per_step(args.batch)
    where = torch.cuda.get_device_name(device) if cuda else f"{args.threads} threads"
    print(f"fp32 matmul: {gflops:.0f} GFLOP/s on {where}; "
          f"conv forward per step: {2 * macs / 1e9:.2f} GFLOP (batch {args.batch})", flush=True)
    best: dict[tuple[str, int], dict] = {}
    for rnd in range(args.rounds):
        for T in Ts:
            for setup in setups:
                library = SETUPS[setup][1]
                if not available(library):
                    best[setup, T] = {"setup": setup, "T": T, "skipped": f"{library} not installed"}
                    continue
                r = run_worker(setup, T, args)
                if "error" not in r:
                    r["conv_gflops"] = 2 * macs * (T + 2 * r["graph_steps"]) / r["s_per_iter"] / 1e9
                    r["round"] = rnd + 1
                old = best.get((setup, T))
                if old is None or "error" in old or ("error" not in r and r["s_per_iter"] < old["s_per_iter"]):
                    best[setup, T] = r
                r = best[setup, T]
                desc = r.get("error") or (f"{r['s_per_iter']:.3f} s/iter, saved {r['saved_bytes'] / 2**20:.1f} MiB"
                                          if "saved_bytes" in r else "")
                print(f"[round {rnd + 1}] T={T:>2} {setup:<26} {desc}", flush=True)
    rows = [best[k] for k in sorted(best, key=lambda k: (setups.index(k[0]), k[1]))]
    table = format_table(rows, Ts, setups, cuda)
    targets = evaluate_targets(best, cuda)
    print()
    print(table)
    print()
    for t in targets:
        v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        met = "" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        print(f"{t['target']:<64} {v:>7}  (≤ {t['limit']})  {met}")
    from leanspike.experiments.logs import write_json  # not at the top: peers' worker processes stay lean
    from leanspike.measure import cpu_description
    payload = {
        "command": "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": f"vgg11 (per-step BN, dropout 0.3), input [T, {args.batch}, 2, 48, 48] binary, 10 classes",
        "batch": args.batch,
        "neuron": {"decay": DECAY, "v_threshold": V_TH, "reset": "subtract", "surrogate": f"sigmoid alpha={ALPHA}"},
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup, "iterations": args.iterations,
        "memory_iterations": args.memory_iterations, "compile_lif": args.compile_lif,
        "matmul_gflops": gflops, "conv_forward_gflop_per_step": 2 * macs / 1e9,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        **cpu_description(),
        "versions": _versions(), "setups": {k: v[0] for k, v in SETUPS.items() if k in setups},
        "rows": rows, "targets": targets, "table": table,
    }

    write_json(out, payload)  # atomic: a stopped run leaves the old file whole
    print(f"wrote {out}")
    return 0


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("leanspike", "spikingjelly", "snntorch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
