"""The peak of live tensor bytes during one training iteration, and what is alive at it.

    python bench/live_peak.py                                   # leanspike BPTT, T = 10
    python bench/live_peak.py --setup leanspike-sltt --T 6 --top 20

The peak RSS increase that ``bench/peers.py`` reports is the allocator's view: live tensors
plus whatever the heap keeps. This command traces every allocation and free of one
iteration (``torch.profiler`` with ``profile_memory``; after warm-up, on the setups and data
of ``bench/peers.py``) and reports the highest sum of bytes allocated during the iteration
and still alive (the weights' gradients included; parameters, optimiser state and the input,
made before it, are not), with the allocations alive at that moment, largest first, each with
the Python frames of leanspike that made it. It reads the profiler's event tree, an internal
of PyTorch (checked with torch 2.13). Prints a table; writes bench/results/live_peak.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402  (the benchmark's setups, model and data)

from leanspike.experiments.logs import write_json  # noqa: E402


def _frames(stack: list[str], depth: int) -> str:
    """The innermost ``depth`` frames of leanspike that made an allocation, then the op that did
    (the innermost one that is not itself an allocation)."""
    ours = [s.split("leanspike/", 1)[1] for s in stack if "leanspike/" in s]
    ops = [s for s in stack if ".py(" not in s
           and not s.startswith(("aten::empty", "aten::new_", "<built-in", "autograd::engine::"))]
    return " > ".join(ours[-depth:] + ops[-1:])


def live_at_peak(iteration, depth: int = 3) -> tuple[int, list[tuple[int, str]]]:
    """Run ``iteration`` once under the profiler: the peak of bytes allocated during it and still
    alive, and ``(bytes, where)`` of every allocation alive at that moment."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True) as prof:
        iteration()
    try:
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError as e:  # an internal of PyTorch's profiler
        raise SystemExit(f"live_peak: this torch ({torch.__version__}) has no profiler event tree: {e}")
    events: list[tuple[int, int, int, str]] = []
    pending = [(root, []) for root in roots]
    while pending:
        node, stack = pending.pop()
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            fields = node.extra_fields
            events.append((node.start_time_ns, fields.ptr, fields.alloc_size, _frames(stack, depth)))
        pending.extend((child, stack + [node.name]) for child in node.children)
    events.sort(key=lambda e: e[0])
    live: dict[int, tuple[int, str]] = {}
    current = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for _, ptr, size, where in events:
        if size > 0:
            live[ptr] = (size, where)
        elif ptr in live:  # a free of a block made before the iteration is not counted either way
            del live[ptr]
        else:
            continue
        current += size
        if current > peak:
            peak, at_peak = current, dict(live)
    return peak, sorted(at_peak.values(), reverse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", default="leanspike-bptt", choices=sorted(peers.SETUPS))
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="allocations to list")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "live_peak.json"))
    args = p.parse_args(argv)
    if args.T < 1 or args.warmup < 0 or args.top < 0:
        p.error(f"--T must be ≥ 1 and --warmup, --top ≥ 0; got {args.T}, {args.warmup}, {args.top}")
    library = peers.SETUPS[args.setup][1]
    if library != "leanspike" and not peers.available(library):
        p.error(f"--setup {args.setup} needs {library} (the bench extra)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(args.T, peers.BATCH, peers.CHANNELS, peers.SIZE, peers.SIZE) < peers.FIRING).float()
    y = torch.randint(0, peers.CLASSES, (peers.BATCH,))
    _, iteration, _ = peers.make_iteration(args.setup, args.T, x, y)
    for _ in range(args.warmup):
        iteration()
    peak, alive = live_at_peak(iteration)
    mib = 2.0 ** 20
    print(f"{args.setup}, T = {args.T}, batch {peers.BATCH}: peak of live bytes made during one iteration "
          f"{peak / mib:.1f} MiB, {len(alive)} allocations alive at it")
    print("| MiB | made by |\n|---:|---|")
    for size, where in alive[:args.top]:
        print(f"| {size / mib:.2f} | {where or '?'} |")
    write_json(Path(args.out), {
        "command": " ".join(["python", "bench/live_peak.py", *(argv if argv is not None else sys.argv[1:])]),
        "setup": args.setup, "T": args.T, "batch": peers.BATCH, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "peak_live_bytes": peak, "alive_at_peak": [{"bytes": s, "made_by": w} for s, w in alive]})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
