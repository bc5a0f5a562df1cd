"""Peak saved-activation bytes and seconds per iteration versus T, for BPTT, SLTT and SLTT-K.

    python bench/memory_vs_T.py                      # VGG-style spiking CNN, 2×32×32 inputs
    python bench/memory_vs_T.py --model vgg11 --size 48

Prints a table and writes bench/results/memory_vs_T.json. Saved bytes exclude
parameters, buffers and the input batch (they exist whatever the method). All
methods run in one process, interleaved per T, on the same inputs.
"""

from __future__ import annotations

import argparse
import platform
import sys
from functools import partial
from pathlib import Path

import torch

from leanspike import BPTT, LIF, SLTT, SLTTK
from leanspike.measure import SavedTensorMeter, time_iterations
from leanspike.models.small import spiking_cnn
from leanspike.experiments.logs import write_json


def build(model_name: str, channels: int, size: int, classes: int):
    neuron = partial(LIF, tau=2.0)
    if model_name == "vgg-style":
        return spiking_cnn(channels, classes, size, widths=(32, 64, 128, 256), neuron=neuron)
    from leanspike.models.registry import build_model

    return build_model(model_name, in_channels=channels, num_classes=classes, input_size=(size, size), neuron=neuron)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg-style")
    p.add_argument("--Ts", default="1,2,4,8,16,32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_vs_T.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.model, args.channels, args.size, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    Ts = [int(t) for t in args.Ts.split(",")]
    methods = {"bptt": BPTT(), "sltt": SLTT(), "sltt-k1": SLTTK(1, generator=torch.Generator().manual_seed(0))}
    rows = []
    print(f"{'T':>4} {'method':<8} {'saved MiB':>10} {'s/iter':>8}")
    for T in Ts:
        x = (torch.rand(T, args.batch, args.channels, args.size, args.size) < 0.2).float()
        y = torch.randint(0, 10, (args.batch,))
        for name, method in methods.items():
            with SavedTensorMeter(exclude=[model, x]) as meter:
                method.train_step(model, x, y, optimizer)
            timing = time_iterations(lambda: method.train_step(model, x, y, optimizer), warmup=1,
                                     iterations=args.iterations)
            rows.append({"T": T, "method": name, "peak_saved_bytes": meter.peak_bytes, "s_per_iter": timing.median_s})
            print(f"{T:>4} {name:<8} {meter.peak_bytes / 2**20:>10.2f} {timing.median_s:>8.3f}", flush=True)
    by = {(r["method"], r["T"]): r["peak_saved_bytes"] for r in rows}
    checks = {}
    if 2 in Ts and max(Ts) > 2:
        checks["sltt_peak_Tmax_over_T2"] = by["sltt", max(Ts)] / by["sltt", 2]
        checks["bptt_peak_Tmax_over_T2"] = by["bptt", max(Ts)] / by["bptt", 2]
        print(f"SLTT peak T={max(Ts)} / T=2: {checks['sltt_peak_Tmax_over_T2']:.3f}   "
              f"BPTT: {checks['bptt_peak_Tmax_over_T2']:.2f} (T ratio {max(Ts) / 2:.0f})")
    payload = {"model": args.model, "batch": args.batch, "input": [args.channels, args.size, args.size],
               "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
               "python": sys.version.split()[0], "rows": rows, "checks": checks}
    out = Path(args.out)
    write_json(out, payload)  # atomic: a stopped run leaves the old file whole
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
