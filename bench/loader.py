"""Does the data path keep up? Batches/s of the Fashion-MNIST loader at T = 20 (direct encoding
included) and of 48×48 event frames (CIFAR10-DVS layout, count integration, T = 10), cold
(integration + cache write) and warm (cache reads).

    python bench/loader.py                       # Fashion-MNIST from /usr/share/datasets/fashion-mnist
    python bench/loader.py --compare-step        # also time one BPTT step of spiking_cnn per batch

The event files are synthetic AEDAT 2.0 recordings written to a temporary folder (the real
CIFAR10-DVS is not shipped); their event count per sample is ``--events``. Writes
bench/results/loader.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from leanspike.data import build_dataset, to_time_major
from leanspike.errors import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_fake_cifar10_dvs(root: Path, per_class: int, events: int, seed: int = 0) -> None:
    """AEDAT 2.0 files with DVS128 addresses: big-endian (address, timestamp) pairs."""
    rng = np.random.default_rng(seed)
    header = b"#!AER-DAT2.0\r\n# synthetic recording for bench/loader.py\r\n"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x, y, p = rng.integers(0, 128, events), rng.integers(0, 128, events), rng.integers(0, 2, events)
            rec = np.empty(events, np.dtype([("a", ">u4"), ("t", ">u4")]))
            rec["a"] = (y << 8) | (x << 1) | p
            rec["t"] = np.sort(rng.integers(0, 1_300_000, events))
            (root / cls / f"cifar10_{cls}_{i}.aedat").write_bytes(header + rec.tobytes())


def time_loader(loader: DataLoader, T: int, encoding: str, max_batches: int, step=None) -> dict:
    """Iterate up to ``max_batches`` batches, encoding each to [T, B, ...]; optionally time a step."""
    n, samples, step_times = 0, 0, []
    start = time.perf_counter()
    for x, y in loader:
        inputs = to_time_major(x, T, encoding)
        n += 1
        samples += len(y)
        if step is not None:
            paused = time.perf_counter()
            step(inputs, y)
            step_times.append(time.perf_counter() - paused)
            start += step_times[-1]  # the loader's clock excludes the training step
        if n >= max_batches:
            break
    seconds = time.perf_counter() - start
    out = {"batches": n, "seconds": round(seconds, 4), "batches_per_s": round(n / seconds, 2),
           "samples_per_s": round(samples / seconds, 1), "input_shape": list(inputs.shape)}
    if step_times:
        med = float(np.median(step_times[1:] if len(step_times) > 1 else step_times))
        out["bptt_step_s_median"] = round(med, 4)
        out["loader_s_per_batch"] = round(seconds / n, 4)
        out["loader_share_of_step"] = round((seconds / n) / med, 3)
    return out


def make_step(in_channels: int, size: int, classes: int, T: int):
    from leanspike import BPTT, LIF
    from leanspike.models.small import spiking_cnn

    torch.manual_seed(0)
    model = spiking_cnn(in_channels, classes, size, neuron=partial(LIF, tau=2.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = BPTT()
    return lambda inputs, y: method.train_step(model, inputs, y, opt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=40, help="batches timed per loader")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--per-class", type=int, default=16, help="synthetic event files per class")
    p.add_argument("--events", type=int, default=100_000, help="events per synthetic recording")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-step", action="store_true", help="also time one BPTT step of spiking_cnn per batch")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    results: dict = {"config": vars(args), "torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "threads": args.threads}

    T = 20
    try:
        ds, info = build_dataset("fashion-mnist", args.fashion_root, train=True, T=T)
    except UserError as exc:
        print(f"fashion-mnist skipped: {exc}")
        results["fashion-mnist"] = {"skipped": str(exc)}
    else:
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, generator=gen)
        step = make_step(1, 28, 10, T) if args.compare_step else None
        r = time_loader(loader, T, info.encoding, args.batches, step)
        results["fashion-mnist"] = {"T": T, **r}
        print(f"fashion-mnist  T={T}  batch={args.batch}: {r['batches_per_s']:8.1f} batches/s "
              f"({r['samples_per_s']:.0f} samples/s), input {r['input_shape']}"
              + (f", BPTT step {r['bptt_step_s_median']:.3f} s" if step else ""))

    T = 10
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar10-dvs"
        t0 = time.perf_counter()
        write_fake_cifar10_dvs(root, args.per_class, args.events)
        write_s = time.perf_counter() - t0
        ds, info = build_dataset("cifar10-dvs", root, train=True, T=T, size=48, cache_dir=Path(tmp) / "cache")
        n_batches = max(1, len(ds) // args.batch)
        for phase in ("cold", "warm"):
            loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                generator=gen, drop_last=True)
            step = make_step(2, 48, 10, T) if args.compare_step and phase == "warm" else None
            r = time_loader(loader, T, info.encoding, n_batches, step)
            results[f"event-frames-48-{phase}"] = {"T": T, "events_per_sample": args.events, **r}
            print(f"event frames 48x48 T={T} {phase:<4} batch={args.batch}: {r['batches_per_s']:8.2f} batches/s "
                  f"({r['samples_per_s']:.0f} samples/s), input {r['input_shape']}"
                  + (f", BPTT step {r['bptt_step_s_median']:.3f} s" if step else ""))
        results["event_files_written_s"] = round(write_s, 2)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
