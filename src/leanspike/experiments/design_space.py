"""The (k, n) design space of temporally-truncated local BPTT: one resumable sweep.

A design-space sweep trains one experiment config (a preset, a YAML file or flags) once
per cell of the grid ``k (truncation interval) × n (spiking layers per local block) ×
classifier (trainable / fixed random)`` and answers the questions of the truncated-local
paper's Figs. 3–8: how test accuracy moves with k and n, what fixed random classifiers
cost, and whether the memory a method holds for backward falls linearly with k (a
least-squares line per (n, classifier): slope and R²) and further with smaller blocks.

It is a thin layer over the generic sweep: :func:`leanspike.experiments.sweep.expand`
builds and validates the grid points and :func:`~leanspike.experiments.sweep.run_sweep`
trains them with :func:`leanspike.trainer.train`, which skips finished runs and resumes
unfinished ones from their checkpoints. This module adds what is specific to the design
space: cells that would repeat a run are run once, and after every run the results
table (CSV, Markdown, JSON with the memory fits) and the plots are rewritten atomically.

Layout of ``out``::

    design_space.json        the grid and base config; a resumed sweep must match it
    runs/<run id>/           one trainer run folder per cell (summary.json when finished)
    results.csv / .md / .json
    accuracy.png, memory.png

Shared cells: when n reaches the network's spiking depth there is a single block and no
local classifier, so ``classifier = random`` trains exactly what ``trainable`` trains;
that cell is not run again but reported with ``shared_with`` naming the run it reuses.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..checkpoint import atomic_write_text
from ..errors import UserError
from . import config as C

GRID_FILE = "design_space.json"
RUNS_DIR = "runs"
RESULT_COLUMNS = ("classifier", "n", "k", "test_accuracy", "train_accuracy", "train_loss",
                  "peak_saved_bytes", "saved_vs_largest_n", "s_per_iter", "train_time_s", "shared_with", "run_id")
GRID_KEYS = ("method.classifier", "method.n", "method.k")


@dataclass
class DesignSpaceResult:
    rows: list[dict[str, Any]]  # one per cell with a finished run, grid order
    fits: list[dict[str, Any]]  # peak saved bytes against k, per (classifier, n)
    ran: list[str]  # run ids trained by this call
    skipped: list[str]  # run ids found finished
    failed: list[str]
    pending: list[str]  # run ids not run (stopped by ``limit``)
    shared: dict[str, str]  # run id -> the run id whose results it reuses


def _check_values(name: str, values: Sequence[Any]) -> list[Any]:
    values = list(values)
    if not values:
        raise UserError(f"design-space: --{name} is empty; give at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"design-space: --{name} repeats a value: {values}")
    return values


def design_grid(ks: Sequence[int], ns: Sequence[int], classifiers: Sequence[str]) -> dict[str, list[Any]]:
    """The sweep grid, classifier outermost, then n and k from large to small."""
    ks, ns = _check_values("ks", ks), _check_values("ns", ns)
    classifiers = _check_values("classifiers", classifiers)
    for name, values in (("ks", ks), ("ns", ns)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"design-space: --{name} value {v!r}; expected integers >= 1")
    for c in classifiers:
        if c not in C.CLASSIFIERS:
            raise UserError(f"design-space: classifier {c!r}; expected one of {', '.join(C.CLASSIFIERS)}")
    return {"method.classifier": classifiers, "method.n": sorted(ns, reverse=True),
            "method.k": sorted(ks, reverse=True)}


def model_depth(cfg: C.ExperimentConfig) -> int | None:
    """The spiking depth of ``cfg``'s model (built on the meta device from the registry's
    reference input), or None when it cannot be told without the data."""
    import torch

    from ..blocks import spiking_depth
    from ..models.registry import REFERENCE, build_model
    from .build import neuron_factory

    ref = REFERENCE.get(cfg.model.name)
    if ref is None:
        return None
    try:
        with torch.device("meta"):
            model = build_model(cfg.model.name, in_channels=ref.in_channels, num_classes=ref.num_classes,
                                input_size=ref.input_size, neuron=neuron_factory(cfg), **cfg.model.options)
        return spiking_depth(model)
    except (ValueError, TypeError, RuntimeError):
        return None


def shared_cells(points, depth: int | None) -> dict[str, str]:
    """Run id of each random-classifier cell with n >= depth -> the trainable cell it equals."""
    if depth is None:
        return {}
    by_key = {(p.config.method.k, p.config.method.n, p.config.method.classifier): p.run_id for p in points}
    shared = {}
    for (k, n, classifier), run_id in by_key.items():
        if classifier == "random" and n >= depth and (k, n, "trainable") in by_key:
            shared[run_id] = by_key[(k, n, "trainable")]
    return shared


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _check_grid_file(out: Path, grid: dict[str, list[Any]], base: C.ExperimentConfig) -> None:
    """Write the grid and base config, or check them against the folder's: the same grid and
    no difference in a field the sweep compares (the generic sweep's ``UNCOMPARED`` fields,
    such as a preset's notes, the data root or the device, may change)."""
    from .sweep import UNCOMPARED

    path = out / GRID_FILE
    payload = json.loads(json.dumps({"grid": grid, "base": C.to_dict(base)}))  # as JSON reads it back
    if not path.exists():
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        return
    saved = _read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("base"), dict):
        raise UserError(f"{path}: not a design-space grid file; choose a new --out")
    diffs = [] if saved.get("grid") == payload["grid"] else ["grid"]
    diffs += [d for d in C.differences(payload["base"], saved["base"]) if d not in UNCOMPARED]
    if diffs:
        raise UserError(f"{path}: this sweep's {', '.join(diffs)} differ from the folder's; "
                        "resume with the same settings or choose a new --out")


def run_design_space(base: C.ExperimentConfig, out: str | Path, *, ks: Sequence[int], ns: Sequence[int],
                     classifiers: Sequence[str] = C.CLASSIFIERS, train: Callable[..., dict[str, Any]] | None = None,
                     limit: int | None = None, progress: bool = False, plots: bool = True,
                     log: Callable[[str], None] = lambda msg: print(msg, flush=True)) -> DesignSpaceResult:
    """Run (or resume) the grid over ``base`` in ``out``; ``limit`` stops after that many
    trained runs, leaving the rest pending as an interruption would."""
    from .sweep import expand, run_sweep

    grid = design_grid(ks, ns, classifiers)
    base = C.apply_overrides(base, [("method.name", "ttl"), ("sweep", {})])
    if base.method.k is None:  # expand validates every point; k and n come from the grid
        base = C.apply_overrides(base, [("method.k", grid["method.k"][0])])
    if base.method.n is None:
        base = C.apply_overrides(base, [("method.n", grid["method.n"][0])])
    points = expand(base, grid)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    depth = model_depth(base)
    too_deep = [n for n in grid["method.n"] if depth is not None and n > depth]
    if too_deep:
        raise UserError(f"design-space: n = {too_deep[0]} exceeds the spiking depth {depth} of model "
                        f"{base.model.name}; expected n <= {depth}")
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    _check_grid_file(out, grid, base)
    shared = shared_cells(points, depth)
    runs = out / RUNS_DIR
    ran: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    pending: list[str] = []
    trainer = train
    if trainer is None:
        from ..trainer import train as trainer
    for point in points:
        if point.run_id in shared:
            continue
        if (runs / point.run_id / "summary.json").is_file():
            skipped.append(point.run_id)
            continue
        if limit is not None and len(ran) + len(failed) >= limit:
            pending.append(point.run_id)
            continue
        outcome = run_sweep([point], runs, trainer, progress=progress, log=log)
        ran += outcome["ran"]
        failed += outcome["failed"]
        skipped += outcome["done"]
        write_results(base, collect_rows(points, runs, shared), out, plots=plots)
    rows = collect_rows(points, runs, shared)
    fits = write_results(base, rows, out, plots=plots)
    return DesignSpaceResult(rows, fits, ran, skipped, failed, pending, shared)


def collect_rows(points, runs: Path, shared: dict[str, str]) -> list[dict[str, Any]]:
    """One row per grid point whose run (or shared run) has finished, in grid order."""
    rows = []
    for point in points:
        source = shared.get(point.run_id, point.run_id)
        summary = _read_json(runs / source / "summary.json")
        if summary is None:
            continue
        m = point.config.method
        rows.append({"classifier": m.classifier, "n": m.n, "k": m.k,
                     "test_accuracy": summary.get("test_accuracy"), "train_accuracy": summary.get("train_accuracy"),
                     "train_loss": summary.get("train_loss"), "peak_saved_bytes": summary.get("peak_saved_bytes"),
                     "s_per_iter": summary.get("s_per_iter"), "train_time_s": summary.get("train_time_s"),
                     "shared_with": source if source != point.run_id else None, "run_id": point.run_id})
    return rows


# -- analysis ------------------------------------------------------------------------------

def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y ≈ slope·x + intercept`` and its R² (1 for an exact fit of constant y)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"fit_line needs two or more (x, y) pairs, got {len(x)} x and {len(y)} y")
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError("fit_line needs at least two distinct x values")
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return slope, intercept, r2


def _ordered(values) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _series(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(classifier, n, rows sorted by k descending) in table order."""
    out = []
    for classifier in _ordered(r["classifier"] for r in rows):
        for n in sorted({r["n"] for r in rows if r["classifier"] == classifier}, reverse=True):
            sel = sorted((r for r in rows if r["classifier"] == classifier and r["n"] == n), key=lambda r: -r["k"])
            out.append((classifier, n, sel))
    return out


def memory_fits(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak saved bytes against k: a least-squares line per (classifier, n) with two or more k."""
    fits = []
    for classifier, n, sel in _series(rows):
        pts = [(float(r["k"]), float(r["peak_saved_bytes"])) for r in sel if r.get("peak_saved_bytes") is not None]
        if len({k for k, _ in pts}) < 2:
            continue
        slope, intercept, r2 = fit_line([k for k, _ in pts], [b for _, b in pts])
        fits.append({"classifier": classifier, "n": n, "points": len(pts), "slope_bytes_per_step": slope,
                     "intercept_bytes": intercept, "r2": r2})
    return fits


def add_relative_memory(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``saved_vs_largest_n``: its peak saved bytes over those of the largest
    n at the same k and classifier (n = depth is plain truncated BPTT)."""
    out = []
    for r in rows:
        peers = [p for p in rows if p["k"] == r["k"] and p["classifier"] == r["classifier"]]
        ref = max(peers, key=lambda p: p["n"]).get("peak_saved_bytes")
        mine = r.get("peak_saved_bytes")
        out.append({**r, "saved_vs_largest_n": mine / ref if ref and mine is not None else None})
    return out


# -- writing -------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for r in rows:
        writer.writerow([_fmt(r.get(c), 6) for c in RESULT_COLUMNS])
    return buf.getvalue()


def _table(rows, cell: Callable[[dict[str, Any]], str]) -> list[str]:
    ks = sorted({r["k"] for r in rows}, reverse=True)
    lines = ["| classifier | n | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for classifier, n, sel in _series(rows):
        by_k = {r["k"]: r for r in sel}
        lines.append(f"| {classifier} | {n} | " + " | ".join(cell(by_k[k]) if k in by_k else "" for k in ks) + " |")
    return lines


def results_markdown(base: C.ExperimentConfig, rows: Sequence[dict[str, Any]],
                     fits: Sequence[dict[str, Any]]) -> str:
    o = base.optimizer
    lines = [f"# Truncated local BPTT design space: {base.model.name} on {base.data.name}, T = {base.T}", "",
             f"{base.epochs} epoch(s) of {base.max_batches or 'all'} batches of {base.batch_size}, "
             f"{o.name} lr {o.lr}" + (f" momentum {o.momentum}" if o.name == "sgd" else "") +
             f", loss {base.loss.name}, leak {base.neuron.decay}, threshold {base.neuron.v_threshold}, "
             f"seed {base.seed}. Peak saved bytes: the most bytes autograd held for backward during "
             "the first metered training iterations (parameters and the input batch not counted).", "",
             "## Test accuracy (%)", ""]
    lines += _table(rows, lambda r: "" if r["test_accuracy"] is None else
                    f"{100 * r['test_accuracy']:.2f}" + (" *" if r.get("shared_with") else ""))
    if any(r.get("shared_with") for r in rows):
        lines += ["", "\\* one block, no local classifier: the same run as the trainable cell."]
    lines += ["", "## Peak saved bytes, MiB (relative to the largest n at the same k)", ""]
    lines += _table(rows, lambda r: "" if r.get("peak_saved_bytes") is None else
                    f"{r['peak_saved_bytes'] / 2**20:.2f}" + (f" ({r['saved_vs_largest_n']:.3f})"
                                                            if r.get("saved_vs_largest_n") is not None else ""))
    if fits:
        lines += ["", "## Peak saved bytes against k: least-squares line", "",
                  "| classifier | n | points | slope (MiB per step of k) | intercept (MiB) | R² |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f['classifier']} | {f['n']} | {f['points']} | {f['slope_bytes_per_step'] / 2**20:.4f} "
                  f"| {f['intercept_bytes'] / 2**20:.4f} | {f['r2']:.5f} |" for f in fits]
    lines += ["", "## All runs", "",
              "train_loss is the trainer's epoch mean of the network output's loss summed over the "
              "T/k intervals, so it is not comparable across k; s_per_iter and train_time_s are wall "
              "times on whatever machine ran the sweep.", "",
              "| " + " | ".join(RESULT_COLUMNS) + " |", "|" + "---|" * len(RESULT_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in RESULT_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(base: C.ExperimentConfig, rows: Sequence[dict[str, Any]], out: Path,
                  plots: bool = True) -> list[dict[str, Any]]:
    """Write results.csv/.md/.json (and the plots) atomically; return the memory fits."""
    rows = add_relative_memory(rows)
    fits = memory_fits(rows)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "results.md", results_markdown(base, rows, fits))
    atomic_write_text(out / "results.json", json.dumps({"runs": rows, "memory_fits": fits}, indent=2) + "\n")
    if plots and rows:
        title = f"{base.model.name} on {base.data.name}, T = {base.T}"
        plot_accuracy(rows, out / "accuracy.png", title)
        plot_memory(rows, fits, out / "memory.png", f"{title}, batch {base.batch_size}")
    return fits


# -- plots ---------------------------------------------------------------------------------

def _save_atomic(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _figure(classifiers: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(classifiers), figsize=(5 * len(classifiers), 3.8), sharey=True, squeeze=False)
    return plt, fig, list(axes[0])


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Test accuracy against k, one line per n; one panel per classifier type (Figs. 3–6)."""
    classifiers = _ordered(r["classifier"] for r in rows)
    ks = sorted({r["k"] for r in rows}, reverse=True)
    plt, fig, axes = _figure(classifiers)
    for ax, classifier in zip(axes, classifiers):
        for c, n, sel in _series(rows):
            if c != classifier:
                continue
            pts = [(ks.index(r["k"]), 100 * r["test_accuracy"]) for r in sel if r["test_accuracy"] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"n = {n}")
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("truncation interval k")
        ax.set_title(f"{classifier} classifiers")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    _save_atomic(fig, path)
    plt.close(fig)


def plot_memory(rows: Sequence[dict[str, Any]], fits: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Peak saved MiB against k with the fitted lines; one panel per classifier (Figs. 7–8)."""
    classifiers = _ordered(r["classifier"] for r in rows)
    plt, fig, axes = _figure(classifiers)
    for ax, classifier in zip(axes, classifiers):
        series = [(c, n, sel) for c, n, sel in _series(rows) if c == classifier]
        for i, (c, n, sel) in enumerate(series):
            pts = sorted((r["k"], r["peak_saved_bytes"] / 2**20) for r in sel if r.get("peak_saved_bytes") is not None)
            # shrinking open markers keep series visible where they coincide
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="osD^v"[i % 5], markersize=11 - 2.5 * (i % 4),
                           markerfacecolor="none", linestyle="none", label=f"n = {n}")[0]
            fit = next((f for f in fits if f["classifier"] == c and f["n"] == n), None)
            if fit is not None and pts:
                xs = [pts[0][0], pts[-1][0]]
                ax.plot(xs, [(fit["slope_bytes_per_step"] * x + fit["intercept_bytes"]) / 2**20 for x in xs],
                        color=line.get_color(), linewidth=1, label=f"fit n = {n}, R² = {fit['r2']:.4f}")
        ax.set_xlabel("truncation interval k")
        ax.set_title(f"{classifier} classifiers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("peak saved for backward (MiB)")
    fig.suptitle(title)
    _save_atomic(fig, path)
    plt.close(fig)
