"""Convolution kernels on this machine: which one is fastest for each VGG-11 layer and batch.

    python bench/conv_kernels.py                    # batches 8, 16, 48; 2 threads
    python bench/conv_kernels.py --batches 8,48 --threads 1

leanspike picks a kernel per call by size (``leanspike.multistep``): on AVX-512 CPUs
F(4×4, 3×3) in PyTorch ops (``leanspike.winograd_f43``) for the input and weight gradients of
3×3 convolutions with ≥ 64 channels on maps of 8×8 to 16×16 and, under 16 samples, larger; NNPACK's Winograd for
the forward and input gradient of big stride-1 calls, F(2×2, 3×3) in PyTorch ops with the
kernels transformed once per batch (``leanspike.winograd``) for those of small-batch calls
with ≥ 128 channels on maps of ≥ 6×6, NNPACK for big calls' weight gradient on
6-16 pixel maps (the input's samples taken as channels), a matrix product over the unfolded
input for the few-channel first layer and for weight gradients on tiny maps, oneDNN otherwise. This benchmark shows the evidence
behind those thresholds: for every 3×3 convolution of the SLTT paper's VGG-11 on 48×48 event
frames, at batches of 8 (one step of SLTT), 16 and 48 (six steps of BPTT), it times the
forward, the input gradient (dX) and the weight gradient (dW) with each candidate (median of
``--repeats`` calls after two warm-up calls, candidates interleaved) and marks the one
leanspike uses. Prints a table; writes bench/results/conv_kernels.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

#: (in channels, out channels, map size) of VGG-11's convolutions on 2×48×48 frames
LAYERS = [(2, 64, 48), (64, 128, 24), (128, 256, 12), (256, 256, 12), (256, 512, 6), (512, 512, 6),
          (512, 512, 3), (512, 512, 3)]
FIRING = 0.2
CL = torch.channels_last
#: (channels, map size) entering VGG-11's 2×2 average poolings (after dropout: 0 or 1/0.7)
POOLS = [(64, 48), (128, 24), (256, 12), (512, 6), (512, 3)]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


F23 = "F(2x2,3x3), cached kernels"
F43 = "F(4x4,3x3), cached kernels"


def candidates(n: int, cin: int, cout: int, size: int) -> dict[str, dict[str, Callable[[], object]]]:
    """{pass: {kernel: call}} for one layer at batch ``n``."""
    x = (torch.rand(n, cin, size, size) < FIRING).float()
    w = torch.randn(cout, cin, 3, 3) * 0.05
    bias = torch.zeros(cout)
    g = torch.randn(n, cout, size, size)
    xc, wc, gc = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), g.contiguous(memory_format=CL)
    flipped = w.transpose(0, 1).flip(2, 3).contiguous()
    one = [1, 1]

    def backward(grad, inp, weight, mask):
        return torch.ops.aten.convolution_backward(grad, inp, weight, None, one, one, one, False, [0, 0], 1, mask)

    def unfolded_forward():
        cols = F.unfold(x, (3, 3), padding=1)
        return torch.bmm(w.view(cout, -1).expand(n, -1, -1), cols)

    def unfolded_weight_grad():
        cols = F.unfold(x, (3, 3), padding=1)
        if cin * 9 < 64:  # leanspike's first-layer form: per-sample products, summed
            return torch.bmm(g.view(n, cout, -1), cols.transpose(1, 2)).sum(0)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return g.transpose(0, 1).reshape(cout, -1) @ rows

    out = {
        "forward": {
            "oneDNN": lambda: F.conv2d(x, w, bias, 1, 1),
            "oneDNN channels-last": lambda: F.conv2d(xc, wc, bias, 1, 1).contiguous(),
            "unfold + matmul": unfolded_forward,
        },
        "dX": {
            "oneDNN": lambda: backward(g, x, w, [True, False, False]),
            "oneDNN channels-last": lambda: backward(gc, xc, wc, [True, False, False])[0].contiguous(),
        },
        "dW": {
            "oneDNN": lambda: backward(g, x, w, [False, True, False]),
            "unfold + matmul": unfolded_weight_grad,
        },
    }
    if cin * 9 >= 64:  # leanspike's shifted windows (deeper layers)
        from leanspike.multistep import _weight_grad_shifted

        out["dW"]["shifted windows"] = lambda: _weight_grad_shifted(g, x, w, (1, 1), (1, 1))
    if cin >= 16:  # F(2×2, 3×3) in PyTorch ops, kernels transformed once per batch as the engine does
        from leanspike import winograd

        kernels = winograd.kernel_transform(w)
        out["forward"][F23] = lambda: winograd.conv3x3(x, kernels, bias, (1, 1))
        out["dX"][F23] = lambda: winograd.conv3x3_input_grad(g, kernels, (1, 1))
        out["dW"][F23] = lambda: winograd.conv3x3_weight_grad(g, x, (1, 1))
    if cin >= 16:  # F(4×4, 3×3), its kernels (and the flipped ones) transformed once per batch too
        from leanspike import winograd_f43

        k43, flipped43 = winograd_f43.kernel_transform(w), winograd_f43.flipped_kernel_transform(w)
        out["forward"][F43] = lambda: winograd_f43.conv3x3(x, k43, bias, (1, 1))
        out["dX"][F43] = lambda: winograd_f43.conv3x3_input_grad(g, flipped43, (1, 1))
        out["dW"][F43] = lambda: winograd_f43.conv3x3_weight_grad(g, x, (1, 1))
    if torch._nnpack_available():
        out["forward"]["NNPACK Winograd"] = lambda: torch.ops.aten._nnpack_spatial_convolution(x, w, bias, one, one)
        out["dX"]["NNPACK Winograd"] = lambda: torch.ops.aten._nnpack_spatial_convolution(
            g, flipped, torch.zeros(cin), one, one)
        if 6 <= size <= 16:
            from leanspike.multistep import _weight_grad_as_conv

            out["dW"]["NNPACK, samples as channels"] = lambda: _weight_grad_as_conv(g, x, (1, 1))
    return out


def leanspike_choice(n: int, cin: int, cout: int, size: int) -> dict[str, str]:
    """The kernel ``leanspike.multistep`` runs for each pass of this call."""
    from leanspike import multistep as ms, winograd

    x = torch.empty(n, cin, size, size)
    w = torch.empty(cout, cin, 3, 3)
    if cin * 9 < ms.SHALLOW_DEPTH:
        return {"forward": "unfold + matmul", "dX": "unfold + matmul", "dW": "unfold + matmul"}
    g = torch.empty(n, cout, size, size)
    dw = {"winograd43": F43, "winograd": F23, "nnpack": "NNPACK, samples as channels", "shifted": "shifted windows",
          "oneDNN": "oneDNN"}[ms.weight_grad_kernel(g, x, w, (1, 1), (1, 1))]
    kernel = ("NNPACK Winograd" if ms._winograd(x, w, (1, 1), (1, 1))
              else F23 if ms._winograd_f23(x, w, (1, 1), (1, 1)) else "oneDNN")
    f43 = ms._winograd_f43(x, w, (1, 1), (1, 1))  # gradients; forwards only with WINOGRAD43_FORWARD
    return {"forward": F43 if f43 and ms.WINOGRAD43_FORWARD else kernel, "dX": F43 if f43 else kernel, "dW": dw}


def pool_rows(batches: list[int], repeats: int) -> list[dict]:
    """PyTorch's ``avg_pool2d`` against :mod:`leanspike.pooling`'s strided additions on VGG-11's
    pooling stages (and which one leanspike runs: the kernel on tensors under
    ``pooling.MIN_VALUES``); checks that both give the same bits."""
    from leanspike import pooling

    args = ([2, 2], [2, 2], [0, 0], False, True, None)
    rows = []
    for n in batches:
        for channels, size in POOLS:
            x = (torch.rand(n, channels, size, size) < FIRING).float() / 0.7
            g = torch.randn(n, channels, size // 2, size // 2)
            if not (torch.equal(pooling.window_average(x, args), F.avg_pool2d(x, *args)) and torch.equal(
                    pooling.window_average_backward(g, x.shape, args),
                    torch.ops.aten.avg_pool2d_backward(g, x, *args))):
                raise RuntimeError(f"leanspike.pooling differs from avg_pool2d on {tuple(x.shape)}")
            calls = {
                ("forward", "avg_pool2d"): lambda: F.avg_pool2d(x, *args),
                ("forward", "strided additions"): lambda: pooling.window_average(x, args),
                ("dX", "avg_pool2d"): lambda: torch.ops.aten.avg_pool2d_backward(g, x, *args),
                ("dX", "strided additions"): lambda: pooling.window_average_backward(g, x.shape, args),
            }
            times = {key: _median_ms(fn, repeats) for key, fn in calls.items()}
            for pass_ in ("forward", "dX"):
                rows.append({"batch": n, "channels": channels, "size": size, "pass": pass_,
                             "avg_pool2d_ms": times[pass_, "avg_pool2d"],
                             "strided_ms": times[pass_, "strided additions"],
                             "leanspike": "strided additions" if pooling.tiles(x, args) else "avg_pool2d"})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="8,16,48", help="comma-separated numbers of samples per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "conv_kernels.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    lines = ["| batch | layer | pass | GFLOP | " + "kernel: ms (* = leanspike's choice) |", "|---:|---|---|---:|---|"]
    for n in [int(b) for b in args.batches.split(",")]:
        for cin, cout, size in LAYERS:
            if cin * 9 < 64 and n > 8:
                continue  # the first layer only runs per step (its input is recomputed, never batched)
            gflop = 2 * n * size * size * cin * cout * 9 / 1e9
            chosen = leanspike_choice(n, cin, cout, size)
            for pass_, calls in candidates(n, cin, cout, size).items():
                if pass_ == "dX" and cin == 2:
                    continue  # the input needs no gradient
                times = {k: _median_ms(fn, args.repeats) for k, fn in calls.items()}
                best = min(times, key=times.get)  # type: ignore[arg-type]
                rows.append({"batch": n, "in": cin, "out": cout, "size": size, "pass": pass_, "gflop": gflop,
                             "ms": times, "fastest": best, "leanspike": chosen[pass_]})
                cells = ", ".join(f"{k}{'*' if k == chosen[pass_] else ''} {v:.1f}" for k, v in times.items())
                lines.append(f"| {n} | {cin}→{cout} @ {size}×{size} | {pass_} | {gflop:.2f} | {cells} |")
                print(lines[-1], flush=True)
    total = {}
    for r in rows:
        key = (r["batch"], "leanspike")
        total[key] = total.get(key, 0.0) + r["ms"].get(r["leanspike"], min(r["ms"].values()))
        key = (r["batch"], "fastest")
        total[key] = total.get(key, 0.0) + min(r["ms"].values())
    print()
    print("\n".join(lines[:2]))
    summary = []
    for n in sorted({k[0] for k in total}):
        lean, fast = total[n, "leanspike"], total[n, "fastest"]
        summary.append({"batch": n, "leanspike_ms": lean, "fastest_ms": fast})
        print(f"batch {n}: leanspike's kernels {lean:.1f} ms for all passes of all layers; "
              f"the fastest per pass {fast:.1f} ms ({lean / fast:.2f}×)")
    pools = pool_rows([int(b) for b in args.batches.split(",")], args.repeats)
    pool_lines = ["| batch | pooling input | pass | avg_pool2d (ms) | strided additions (ms) | ratio | leanspike runs |",
                  "|---:|---|---|---:|---:|---:|---|"]
    for r in pools:
        pool_lines.append(f"| {r['batch']} | {r['channels']} × {r['size']}×{r['size']} | {r['pass']} | "
                          f"{r['avg_pool2d_ms']:.2f} | {r['strided_ms']:.2f} | "
                          f"{r['strided_ms'] / r['avg_pool2d_ms']:.2f} | {r['leanspike']} |")
    print()
    print("\n".join(pool_lines))
    from leanspike.experiments.logs import write_json
    from leanspike.measure import cpu_description

    write_json(Path(args.out), {
        "command": "python bench/conv_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, **cpu_description(),
        "python": platform.python_version(), "rows": rows, "summary": summary, "table": "\n".join(lines),
        "pool_rows": pools, "pool_table": "\n".join(pool_lines)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
