"""How much local blocks lower the peak of saved activations, measured.

    python bench/local_memory.py                 # LeNet-1 (T = 20) and AlexNet (T = 10), batch 16
    python bench/local_memory.py --batch 32

The truncated-local engine runs one block at a time over an interval and goes back through
it before the next block starts, so the peak is the largest block's graph (with its local
classifier), not the whole network's. For each model and interval k this measures the peak
bytes autograd holds for one batch of ``TruncatedLocalBPTT(k, n)`` (parameters, local
classifiers and the input batch left out: ``leanspike.planner.measure_saved_bytes``) for
every block size n, relative to n = depth (one block: BPTT truncated to k). Random inputs:
saved bytes do not depend on the values. Writes bench/results/local_memory.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from leanspike import TruncatedLocalBPTT, spiking_depth
from leanspike.models.registry import build_model
from leanspike.planner import measure_saved_bytes, random_batch
from leanspike.experiments.logs import write_json

#: model -> (input shape, classes, T, block sizes, intervals)
SETUPS = {
    "lenet1": ((1, 28, 28), 10, 20, (4, 2, 1), (20, 5, 1)),
    "alexnet": ((3, 32, 32), 10, 10, (8, 4, 2, 1), (10, 5, 1)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--models", default=",".join(SETUPS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "local_memory.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print("| model | T | k | n | blocks | peak saved (MiB) | vs n = depth |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        shape, classes, T, ns, ks = SETUPS[name]
        torch.manual_seed(0)
        model = build_model(name, in_channels=shape[0], num_classes=classes, input_size=shape[1])
        depth = spiking_depth(model)
        x, y = random_batch(model, shape, T, args.batch, classes)
        for k in ks:
            base = None
            for n in ns:
                saved = measure_saved_bytes(model, TruncatedLocalBPTT(k, n), x, y)
                base = saved if base is None else base
                blocks = -(-depth // n)
                rows.append({"model": name, "T": T, "k": k, "n": n, "blocks": blocks, "batch": args.batch,
                             "saved_bytes": saved, "vs_one_block": saved / base})
                print(f"| {name} | {T} | {k} | {n} | {blocks} | {saved / 2**20:.2f} | {saved / base:.3f} |", flush=True)
    payload = {"command": "python bench/local_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "torch": torch.__version__, "machine": platform.machine(), "rows": rows}
    out = Path(args.out)
    write_json(out, payload)  # atomic: a stopped run leaves the old file whole
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
