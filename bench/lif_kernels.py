"""The LIF time loop on a GPU: Triton kernels (``leanspike.lif_triton``) against the tensor path.

    python bench/lif_kernels.py                       # needs a CUDA device and Triton
    python bench/lif_kernels.py --rounds 24 --batches 8,128

Two measurements, both with the paths side by side in one process:

- per call: GPU time (CUDA events) of one LIF layer's forward (with and without the saved
  potentials) and backward (with temporal routes, as BPTT runs it; without, as SLTT does) on
  VGG-11-sized currents, T = 1 and 6;
- whole training iterations of ``bench/peers.py``'s setups (VGG-11, T = 6): the two paths
  interleaved, order alternating, ``--rounds`` pairs of 3 iterations; the median of each
  round's ratio and how many rounds the kernels won, plus kernels launched and GPU busy time
  per iteration (``torch.profiler``).

Prints a table; writes bench/results/lif_kernels_cuda.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402

from leanspike import neuron  # noqa: E402
from leanspike.neuron import Dynamics  # noqa: E402
from leanspike.surrogate import Sigmoid  # noqa: E402

T = 6
#: [steps, neurons per step]: VGG-11's first LIF layer (64×48×48) at batch 128, and its third (256×12×12)
CALLS = [(1, 128 * 64 * 48 * 48), (6, 128 * 64 * 48 * 48), (6, 128 * 256 * 12 * 12)]


def _gpu_us(fn: Callable[[], object], calls: int = 50) -> float:
    for _ in range(5):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / calls * 1e3


def per_call(device: torch.device) -> list[dict]:
    rows = []
    for steps, numel in CALLS:
        x = torch.rand(steps, numel, device=device) * 1.5
        u, grad = torch.empty_like(x), torch.randn_like(x)
        routes = Dynamics(0.5, 1.0, "soft", Sigmoid(4.0), False)
        spatial = routes._replace(temporal_routes=False)
        row: dict = {"steps": steps, "neurons": numel}
        for path, use in (("tensor", False), ("triton", True)):
            neuron.USE_TRITON = use
            row[path] = {
                "forward, u saved": _gpu_us(lambda: neuron.lif_forward(x, None, routes, u)),
                "forward, no graph": _gpu_us(lambda: neuron.lif_forward(x, None, routes)),
                "backward, temporal routes": _gpu_us(lambda: neuron.lif_backward(u, grad, None, routes)),
                "backward, no routes (SLTT)": _gpu_us(lambda: neuron.lif_backward(u, grad, None, spatial)),
            }
        rows.append(row)
    neuron.USE_TRITON = True
    return rows


def _profile(iteration: Callable[[], object], n: int = 3) -> tuple[float, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            iteration()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return sum(e.count for e in events) / n, sum(e.self_device_time_total for e in events) / n / 1e3


def iterations(device: torch.device, setups: list[str], batches: list[int], rounds: int) -> list[dict]:
    rows = []
    for batch in batches:
        for setup in setups:
            torch.manual_seed(0)
            x = (torch.rand(T, batch, peers.CHANNELS, peers.SIZE, peers.SIZE) < peers.FIRING).float().to(device)
            y = torch.randint(0, peers.CLASSES, (batch,)).to(device)
            _, iteration, _ = peers.make_iteration(setup, T, x, y)
            profiled = {}
            for use in (True, False):
                neuron.USE_TRITON = use
                for _ in range(5):
                    iteration()
                profiled[use] = _profile(iteration)
            times: dict[bool, list[float]] = {True: [], False: []}
            for r in range(rounds):
                for use in ((True, False) if r % 2 == 0 else (False, True)):
                    neuron.USE_TRITON = use
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(3):
                        iteration()
                    torch.cuda.synchronize()
                    times[use].append((time.perf_counter() - start) / 3)
            pairs = list(zip(times[True], times[False]))
            rows.append({
                "setup": setup, "batch": batch, "T": T,
                "triton_ms": statistics.median(times[True]) * 1e3, "tensor_ms": statistics.median(times[False]) * 1e3,
                "paired_ratio": statistics.median(a / b for a, b in pairs), "rounds_won": sum(a < b for a, b in pairs),
                "rounds": rounds, "kernels": {"triton": profiled[True][0], "tensor": profiled[False][0]},
                "gpu_busy_ms": {"triton": profiled[True][1], "tensor": profiled[False][1]},
                "times_s": {"triton": times[True], "tensor": times[False]}})
    neuron.USE_TRITON = True
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", default="leanspike-bptt,leanspike-sltt,leanspike-sltt-k1")
    p.add_argument("--batches", default="8,128")
    p.add_argument("--rounds", type=int, default=24)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lif_kernels_cuda.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("lif_kernels: needs a CUDA device (the kernels run on CUDA tensors only)", file=sys.stderr)
        return 2
    if neuron._triton_kernels() is None:
        print("lif_kernels: needs Triton (it comes with PyTorch's CUDA builds)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    calls = per_call(device)
    lines = ["| steps × neurons | pass | tensor path (µs) | Triton (µs) | ratio |", "|---|---|---:|---:|---:|"]
    for row in calls:
        for name, tensor_us in row["tensor"].items():
            lines.append(f"| {row['steps']} × {row['neurons']} | {name} | {tensor_us:.0f} | {row['triton'][name]:.0f} "
                         f"| {row['triton'][name] / tensor_us:.2f} |")
    print("\n".join(lines), flush=True)
    setups = [s for s in args.setups.split(",") if s]
    runs = iterations(device, setups, [int(b) for b in args.batches.split(",")], args.rounds)
    table = ["| setup | batch | tensor path (ms) | Triton (ms) | paired ratio | rounds won | kernels | GPU busy (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        table.append(f"| {r['setup']} | {r['batch']} | {r['tensor_ms']:.1f} | {r['triton_ms']:.1f} | "
                     f"{r['paired_ratio']:.3f} | {r['rounds_won']}/{r['rounds']} | "
                     f"{r['kernels']['tensor']:.0f} → {r['kernels']['triton']:.0f} | "
                     f"{r['gpu_busy_ms']['tensor']:.1f} → {r['gpu_busy_ms']['triton']:.1f} |")
    print("\n".join(table), flush=True)
    result = {"command": "python bench/lif_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "triton": neuron._triton_kernels().triton.__version__, "python": platform.python_version(),
              "per_call_us": calls, "iterations": runs, "table": "\n".join(lines + [""] + table)}
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
