"""The memory model against measurement: calibrate on a few short runs, predict the others.

    python bench/memory_model.py                       # lenet1, spiking_cnn, alexnet, vgg11
    python bench/memory_model.py --models lenet1 --batch 16

For every model: measure BPTT's peak saved bytes at T = 1, 2 and 3 and TBPTT(2) at T = 4 (one
batch size), and the same for the local method (k = T, then k = 2) for each block size n it
predicts; fit each (leanspike.planner.calibrate, as ``leanspike plan`` does: a line through
intervals of 2 and 3 steps, one step on its own, the carry a later interval keeps), then
predict and measure TBPTT(k), SLTT, SLTT-K and the local method (k, n) at other T.
Saved bytes exclude parameters (local classifiers' too), buffers and the input batch. The
analytic column is the uncalibrated count of leanspike.costs (k · elements autograd keeps
per step · 4 bytes).
Prints a Markdown table and writes bench/results/memory_model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import leanspike

from leanspike.costs import CostSetting, analyze, profile_model
from leanspike.models.registry import REFERENCE, build_model
from leanspike.planner import Setting, calibrate, measure_saved_bytes, random_batch

SETTINGS = [  # (setting, T)
    (Setting("bptt"), 4), (Setting("bptt"), 8),
    (Setting("tbptt", k=2), 8), (Setting("tbptt", k=3), 8), (Setting("tbptt", k=4), 6),
    (Setting("sltt"), 8), (Setting("sltt-k", K=2), 8),
    (Setting("local", k=1, n=1), 4), (Setting("local", k=2, n=1), 8), (Setting("local", k=4, n=2), 8),
    (Setting("local", k=8, n=2), 8), (Setting("local", k=3, n=4), 6),
]


def analytic(profile, setting: Setting, T: int, batch: int) -> float:
    n = setting.n if setting.method == "local" else profile.depth
    k = setting.interval(T)
    report = analyze(profile, CostSetting(T, k, int(n), "trainable", batch))
    return report.memory["engine"] - report.memory["weights"] - report.memory["grads"]


def run_model(name: str, batch: int) -> list[dict]:
    ref = REFERENCE[name]
    torch.manual_seed(0)
    model = build_model(name, in_channels=ref.in_channels, num_classes=ref.num_classes, input_size=ref.input_size)
    shape = (ref.in_channels, ref.input_size, ref.input_size)
    profile = profile_model(model, shape, ref.num_classes)
    # the local method is calibrated on itself for each block size n used below: its engine frees
    # each block's graph before the next, which BPTT's line cannot tell
    ns = sorted({int(s.n) for s, _ in SETTINGS if s.method == "local" and int(s.n) < profile.depth})
    memory = calibrate(model, shape, ref.num_classes, batches=(batch,), profile=profile, local_ns=ns)
    rows = []
    for setting, T in SETTINGS:
        if setting.method == "local" and int(setting.n) >= profile.depth:
            continue
        x, y = random_batch(model, shape, T, batch, ref.num_classes, seed=1)
        got = measure_saved_bytes(model, setting.build(), x, y)
        pred = memory.saved_bytes(setting, T, batch)
        ana = analytic(profile, setting, T, batch)
        rows.append({"model": name, "setting": setting.label(), "T": T, "batch": batch, "measured_bytes": got,
                     "predicted_bytes": pred, "error": pred / got - 1, "analytic_bytes": ana,
                     "analytic_error": ana / got - 1})
        print(f"| {name} | {setting.label()} | {T} | {batch} | {got / 2**20:.2f} | {pred / 2**20:.2f} | "
              f"{100 * (pred / got - 1):+.2f}% | {ana / 2**20:.2f} | {100 * (ana / got - 1):+.2f}% |", flush=True)
    return [{"calibration": memory.as_dict(), "model": name}] + rows


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(leanspike.__file__).parent, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet1", "spiking_cnn", "alexnet", "vgg11"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_model.json"))
    args = p.parse_args(argv)
    print("| model | setting | T | batch | measured MiB | predicted MiB | error | analytic MiB | analytic error |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.models:
        results += run_model(name, args.batch)
    rows = [r for r in results if "error" in r]
    worst = max(abs(r["error"]) for r in rows)
    print(f"\nworst calibrated error {100 * worst:.2f}% over {len(rows)} settings")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"leanspike_commit": _commit(), "torch": torch.__version__,
                                          "python": sys.version.split()[0],
                                          "machine": platform.machine(), "calibration_settings": "BPTT, T = 1 and 2",
                                          "worst_error": worst, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
