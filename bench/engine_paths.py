"""Two settings of the engine side by side, per model, batch and method: by default its two
paths (every interval layer by layer, the default where the model allows it, against step by
step); with ``--compare cpu-rules``, the convolution kernels this CPU gets against the rules of
the earlier machines (NNPACK wherever it applies, F(2×2, 3×3) at every batch it applies to).

    python bench/engine_paths.py                                 # VGG-11, AlexNet, LeNet-1, spiking CNN
    python bench/engine_paths.py --models lenet1:128 alexnet:32 --methods bptt,sltt --rounds 12
    python bench/engine_paths.py --compare cpu-rules             # writes bench/results/kernel_rules.json

Each model gets its reference input (binary frames, 30% ones, ``models.registry.REFERENCE``) and
trains in one process with the two settings interleaved round by round (the order alternating),
so that the machine's drift hits both alike; the median of each setting's rounds after the first
two is kept. Prints a table and writes bench/results/engine_paths.json (kernel_rules.json). The
layer-by-layer path also keeps less for backward; `bench/memory_vs_T.py` measures that.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from leanspike import BPTT, SLTT, SLTTK, multistep
from leanspike.experiments.logs import write_json
from leanspike.measure import cpu_description
from leanspike.models.registry import REFERENCE, build_model

METHODS = {"bptt": BPTT, "sltt": SLTT, "sltt-k1": lambda: SLTTK(1, generator=torch.Generator().manual_seed(0))}
DEFAULT_MODELS = ["vgg11:8", "alexnet:32", "lenet1:128", "spiking_cnn:128"]


#: what ``--compare`` interleaves: a baseline and a candidate, each a name and the ``multistep``
#: switches it sets (the ratio is candidate / baseline)
COMPARISONS = {
    "paths": (("step by step", {"ENABLED": False}), ("layer by layer", {"ENABLED": True})),
    "cpu-rules": (("earlier rules", {"USE_NNPACK": torch._nnpack_available(), "WINOGRAD_MAX_BATCH": None}),
                  ("this CPU's rules", {"USE_NNPACK": multistep.USE_NNPACK,
                                        "WINOGRAD_MAX_BATCH": multistep.WINOGRAD_MAX_BATCH})),
}


def measure(name: str, batch: int, T: int, methods: list[str], rounds: int, compare: str = "paths") -> list[dict]:
    ref = REFERENCE[name]
    size = ref.input_size if isinstance(ref.input_size, int) else ref.input_size[0]
    torch.manual_seed(0)
    model = build_model(name, in_channels=ref.in_channels, num_classes=ref.num_classes, input_size=size)
    x = (torch.rand(T, batch, ref.in_channels, size, size) < 0.3).float()
    y = torch.randint(0, ref.num_classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    settings = COMPARISONS[compare]
    saved = {key: getattr(multistep, key) for _, switches in settings for key in switches}
    rows = []
    for method_name in methods:
        method = METHODS[method_name]()
        times: list[list[float]] = [[], []]
        try:
            for r in range(rounds):
                for i in ((1, 0) if r % 2 else (0, 1)):
                    for key, value in settings[i][1].items():
                        setattr(multistep, key, value)
                    t0 = time.perf_counter()
                    method.train_step(model, x, y, optimizer)
                    times[i].append(time.perf_counter() - t0)
        finally:
            for key, value in saved.items():
                setattr(multistep, key, value)
        base, cand = (statistics.median(t[2:]) for t in times)
        rows.append(dict(model=name, batch=batch, T=T, method=method_name, compare=compare,
                         baseline=settings[0][0], baseline_s=base, candidate=settings[1][0], candidate_s=cand,
                         ratio=cand / base, rounds=rounds))
        print(f"{name:12s} {batch:5d} {T:3d} {method_name:8s} {base * 1e3:16.1f} {cand * 1e3:16.1f} "
              f"{cand / base:7.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="name:batch (names from the registry)")
    p.add_argument("--methods", default="bptt,sltt,sltt-k1")
    p.add_argument("--T", type=int, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", default="paths", choices=sorted(COMPARISONS),
                   help="paths: layer by layer against step by step; cpu-rules: this CPU's kernel rules "
                        "against the earlier machines' (the same rules where the CPU has no AVX-512)")
    p.add_argument("--out", help="JSON file (default bench/results/engine_paths.json, kernel_rules.json for cpu-rules)")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    specs = []
    for spec in args.models:
        name, _, batch = spec.partition(":")
        if name not in REFERENCE or not batch.isdigit() or int(batch) < 2:
            p.error(f"--models: {spec!r} is not name:batch with a registry model and a batch of 2 or more")
        specs.append((name, int(batch)))
    if unknown:
        p.error(f"--methods: unknown {unknown}, expected some of {sorted(METHODS)}")
    if args.rounds < 3:
        p.error(f"--rounds must be at least 3 (the first two are warm-up), got {args.rounds}")
    torch.set_num_threads(args.threads)
    (base, _), (cand, _) = COMPARISONS[args.compare]
    out = Path(args.out or Path(__file__).parent / "results" /
               ("engine_paths.json" if args.compare == "paths" else "kernel_rules.json"))
    print(f"{'model':12s} {'batch':>5s} {'T':>3s} {'method':8s} {base + ' ms':>16s} {cand + ' ms':>16s} {'ratio':>7s}")
    rows = [row for name, batch in specs for row in measure(name, batch, args.T, methods, args.rounds, args.compare)]
    command = "python " + " ".join(["bench/engine_paths.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(out, dict(command=command, threads=args.threads, torch=torch.__version__, machine=platform.machine(),
                         **cpu_description(), python=platform.python_version(), rows=rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
