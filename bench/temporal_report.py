"""Tables and plots from docs/results/temporal_runs.jsonl (written by bench/temporal.py).

    python bench/temporal.py report

Writes docs/results/temporal_results.md, temporal_accuracy.png and temporal_cosine.png.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
RUNS = RESULTS / "temporal_runs.jsonl"
ORDER = ("bptt", "tbptt-T/4", "tbptt-1", "sltt", "sltt-k", "sltt-k-scaleK", "ttl", "ottt")
TASK_TITLES = {"rows": "Sequential Fashion-MNIST, rows (T = 28, spiking MLP 28-128-128-10)",
               "saccades": "Fashion-MNIST saccade events, 8 count frames (T = 8, small spiking CNN)",
               "saccades28": "Fashion-MNIST saccade events, 28 count frames (T = 28, small spiking CNN)"}


def load() -> list[dict]:
    """Every result, the last one per key (a configuration run again replaces the older line)."""
    rows = {}
    for line in RUNS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["key"]] = row
    return list(rows.values())


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def tag(r: dict) -> str:
    return r.get("tag", "main")


def accuracy_table(rows: list[dict], task: str, which: str = "main") -> list[str]:
    runs = [r for r in rows if r["kind"] == "train" and r["task"] == task and tag(r) == which]
    taus = sorted({r["tau"] for r in runs})
    acc: dict[tuple[str, float], list[float]] = defaultdict(list)
    labels, secs = {}, defaultdict(list)
    for r in runs:
        acc[(r["method"], r["tau"])].append(r["accuracy"])
        labels[r["method"]] = r["label"]
        secs[r["method"]].append(r["s_per_iter_median"])
    head = "| method | " + " | ".join(f"τ = {t:g}" for t in taus) + " |"
    out = [head, "|---" * (len(taus) + 1) + "|"]
    for m in ORDER:
        if m not in labels:
            continue
        cells = []
        for t in taus:
            v = acc.get((m, t))
            cells.append(f"{mean_std(v)} (n={len(v)})" if v else "–")
        out.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
    return out


def cost_table(rows: list[dict], task: str) -> list[str]:
    cost = [r for r in rows if r["kind"] == "cost" and r["task"] == task]
    runs = [r for r in rows if r["kind"] == "train" and r["task"] == task and tag(r) == "main"]
    labels = {r["method"]: r["label"] for r in runs}
    train_secs = defaultdict(list)
    for r in runs:
        train_secs[r["method"]].append(r["s_per_iter_median"])
    if not cost:
        return []
    c = cost[-1]
    base = next(x for x in c["rows"] if x["method"] == "bptt")
    out = [f"Batch {c['batch']}, τ = {c['tau']:g}, torch {c['torch']}, {c['threads']} thread(s).", "",
           "| method | saved activations (MiB) | vs BPTT | s/iter (interleaved) | s/iter (median over training runs) |",
           "|---|---|---|---|---|"]
    for x in c["rows"]:
        m = x["method"]
        tr = statistics.median(train_secs[m]) if train_secs[m] else float("nan")
        out.append(f"| {labels.get(m, m)} | {x['saved_bytes'] / 2**20:.2f} | {x['saved_bytes'] / base['saved_bytes']:.2f}× "
                   f"| {x['s_per_iter']:.3f} | {tr:.3f} |")
    return out


def cosine_table(rows: list[dict], task: str, which: str = "main") -> list[str]:
    runs = sorted((r for r in rows if r["kind"] == "train" and r["task"] == task and r["method"] == "bptt"
                   and tag(r) == which
                   and r["seed"] == 0 and r.get("cosine")), key=lambda r: r["tau"])
    if not runs:
        return []
    layers = list(runs[0]["cosine"][0][1]["layers"])
    out = ["| τ | mean at init | mean after training | mean over training | "
           + " | ".join(f"{name} (end)" for name in layers) + " |",
           "|---" * (4 + len(layers)) + "|"]
    for r in runs:
        means = [c[1]["mean"] for c in r["cosine"]]
        end = r["cosine"][-1][1]["layers"]
        out.append(f"| {r['tau']:g} | {means[0]:.3f} | {means[-1]:.3f} | {statistics.mean(means):.3f} | "
                   + " | ".join(f"{end[name]:.3f}" for name in layers) + " |")
    return out


def scale_table(rows: list[dict]) -> list[str]:
    out = ["| task | scale | ‖g_K‖ / ‖g_SLTT‖ (one draw, mean ± std) | ‖mean of draws‖ / ‖g_SLTT‖ "
           "| cosine(g_K, g_SLTT) | accuracy, Adam | accuracy, SGD |", "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "scale"):
        task = r["task"]
        for scale, method in (("T", "sltt-k"), ("K", "sltt-k-scaleK")):
            s = r["scales"][scale]
            acc, sgd = ([x["accuracy"] for x in rows if x["kind"] == "train" and x["task"] == task
                         and x["method"] == method and x["tau"] == r["tau"] and tag(x) == which]
                        for which in ("main", "sgd"))
            out.append(f"| {task} (T = {r['T']}, K = {max(1, r['T'] // 4)}) | {scale} | "
                       f"{s['norm_ratio_mean']:.3f} ± {s['norm_ratio_std']:.3f} | {s['mean_grad_norm_ratio']:.3f} | "
                       f"{s['cosine_mean']:.3f} | {mean_std(acc) if acc else '–'} | {mean_std(sgd) if sgd else '–'} |")
    return out


def plots(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASK_TITLES if any(r.get("task") == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        runs = [r for r in rows if r["kind"] == "train" and r["task"] == task and tag(r) == "main"]
        methods = [m for m in ORDER if any(r["method"] == m for r in runs)]
        taus = sorted({r["tau"] for r in runs})
        width = 0.8 / len(taus)
        for j, tau in enumerate(taus):
            means, errs = [], []
            for m in methods:
                v = [r["accuracy"] * 100 for r in runs if r["method"] == m and r["tau"] == tau]
                means.append(statistics.mean(v) if v else 0)
                errs.append(statistics.stdev(v) if len(v) > 1 else 0)
            ax.bar([i + j * width for i in range(len(methods))], means, width, yerr=errs, label=f"τ = {tau:g}")
        labels = {r["method"]: r["label"] for r in runs}
        ax.set_xticks([i + width * (len(taus) - 1) / 2 for i in range(len(methods))])
        ax.set_xticklabels([labels[m] for m in methods], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(40, 85)
        ax.set_title(TASK_TITLES[task], fontsize=9)
        ax.legend(fontsize=8, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(RESULTS / "temporal_accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in sorted((r for r in rows if r["kind"] == "train" and r["task"] == task and r["method"] == "bptt"
                         and r["seed"] == 0 and r.get("cosine")), key=lambda r: (tag(r) != "main", r["tau"])):
            ax.plot([c[0] for c in r["cosine"]], [c[1]["mean"] for c in r["cosine"]], marker="o", ms=3,
                    label=f"τ = {r['tau']:g}" + ("" if tag(r) == "main" else f" ({tag(r)})"))
        ax.set_xlabel("training iteration (BPTT run)")
        ax.set_ylabel("cos(BPTT, SLTT) gradient, layer mean")
        ax.set_title(TASK_TITLES[task], fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "temporal_cosine.png", dpi=110)
    plt.close(fig)


def report() -> int:
    rows = load()
    lines = ["# Temporal benchmarks: results", "",
             "Generated by `python bench/temporal.py report` from `temporal_runs.jsonl`; how the runs were made "
             "and what they mean: [../temporal_tasks.md](../temporal_tasks.md).", ""]
    for task, title in TASK_TITLES.items():
        if not any(r.get("task") == task for r in rows):
            continue
        train = [r for r in rows if r["kind"] == "train" and r["task"] == task]
        setup = next((r for r in train if tag(r) == "main"), {})
        lines += [f"## {title}", "",
                  f"Training: {setup.get('n_train')} samples, {setup.get('epochs')} epoch(s), batch "
                  f"{setup.get('batch')}, Adam lr {setup.get('lr')}; test: {setup.get('n_test')} samples.", "",
                  "### Test accuracy (%)", "", *accuracy_table(rows, task), "",
                  "### Activation memory and time per iteration", "", *cost_table(rows, task), "",
                  "### Cosine of BPTT and spatial-only (SLTT) gradients during BPTT training (seed 0)", "",
                  *cosine_table(rows, task), ""]
        for extra in sorted({tag(r) for r in train} - {"main"}):
            runs = [r for r in train if tag(r) == extra]
            x = runs[0]
            lines += [f"### Extra runs `{extra}`", "",
                      f"{x['n_train']} samples, {x['epochs']} epoch(s), batch {x['batch']}, "
                      f"{x.get('optimizer', 'adam')} lr {x['lr']}"
                      + (" (momentum 0.9)" if x.get("optimizer") == "sgd" else "") + ".", "",
                      *accuracy_table(rows, task, extra), ""]
            cos = cosine_table(rows, task, extra)
            if cos:
                lines += ["Cosine of BPTT and SLTT gradients during the BPTT run (seed 0):", "", *cos, ""]
    lines += ["## SLTT-K gradient scale (τ = 2, at initialisation, 20 draws of the K steps)", "",
              *scale_table(rows), "", "![accuracy](temporal_accuracy.png)", "", "![cosine](temporal_cosine.png)", ""]
    (RESULTS / "temporal_results.md").write_text("\n".join(lines))
    plots(rows)
    print(f"wrote {RESULTS / 'temporal_results.md'}")
    return 0
