"""Reports over a folder of runs: a Markdown table (mean ± std over seeds) and plots of
accuracy and memory against the swept field.

Runs are found by their ``summary.json`` (finished) or ``config.yaml`` (unfinished).
The swept fields are the sweep's grid keys when ``sweep.json`` is there, otherwise
every config field whose value differs between runs. Runs that differ only in the
seed form one row. Plots need matplotlib (the ``plots`` extra); without it only the
table is written.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .logs import CONFIG, SUMMARY, check_writable
from .sweep import SWEEP_FILE

#: config fields that never make two runs different experiments
IGNORED = {"name", "description", "source", "notes", "seed", "device", "data.root", "data.workers",
           "data.test_batch_size", "init_from", "tensorboard", "requires_init"}
METRICS = ("test_accuracy", "best_test_accuracy", "peak_saved_bytes", "peak_rss_bytes", "cuda_peak_bytes",
           "s_per_iter")


@dataclass
class Run:
    folder: Path
    config: dict[str, Any]  # flattened: "optimizer.lr" -> 0.1
    summary: dict[str, Any] | None


@dataclass
class Row:
    key: tuple[Any, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        out = []
        for r in self.runs:
            v = (r.summary or {}).get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out

    def mean_std(self, metric: str) -> tuple[float, float, int] | None:
        vals = self.values(metric)
        if not vals:
            return None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("options", "sweep"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _read_text(path: Path, expected: str) -> str:
    """``path`` as UTF-8 text; a one-line UserError naming the file and what it should hold."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"report: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"report: {path} is not a UTF-8 text file (byte {exc.start}); expected {expected}") from None


def _read_json(path: Path, expected: str) -> Any:
    text = _read_text(path, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"report: {path} is not valid JSON (line {exc.lineno}); expected {expected}") from None


def _read_summary(path: Path) -> dict[str, Any]:
    expected = "a JSON object of the run's results"
    summary = _read_json(path, expected)
    if not isinstance(summary, dict):
        raise UserError(f"report: {path} holds a JSON {type(summary).__name__}; expected {expected}")
    return summary


def _read_config(path: Path, finished: bool) -> dict[str, Any] | None:
    """The run's config mapping. A config that cannot be read is an error beside a
    ``summary.json`` (the finished run would silently vanish from the table) and is
    skipped otherwise, as any stray file of that name is."""
    expected = "the run's YAML mapping of config fields"
    try:
        config = yaml.safe_load(_read_text(path, expected)) or {}
    except UserError:
        if finished:
            raise
        return None
    except yaml.YAMLError as exc:
        if not finished:
            return None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"report: {path} is not valid YAML{where}; expected {expected}") from None
    if not isinstance(config, dict):
        if not finished:
            return None
        raise UserError(f"report: {path} holds a YAML {type(config).__name__}; expected {expected}")
    return config


def find_runs(root: Path) -> list[Run]:
    runs = []
    for cfg_path in sorted(root.rglob(CONFIG)):
        summary_path = cfg_path.parent / SUMMARY
        finished = summary_path.is_file()
        config = _read_config(cfg_path, finished)
        if config is None:
            continue
        summary = _read_summary(summary_path) if finished else None
        runs.append(Run(cfg_path.parent, flatten(config), summary))
    return runs


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _sweep_grid(path: Path) -> dict[str, list[Any]]:
    """The ``grid`` of a sweep.json: ``{FIELD: [values...]}`` (empty when it has none)."""
    expected = 'a JSON object {"grid": {FIELD: [V1, V2, ...]}}'
    doc = _read_json(path, expected)
    if not isinstance(doc, dict):
        raise UserError(f"report: {path} holds a JSON {type(doc).__name__}; expected {expected}")
    grid = doc.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"report: {path}: grid is a JSON {type(grid).__name__}; expected {expected}")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise UserError(f"report: {path}: grid field {key} holds {values!r} ({type(values).__name__}); "
                            f"expected a list of values")
    return grid


def swept_fields(root: Path, runs: list[Run]) -> list[str]:
    sweep = root / SWEEP_FILE
    if sweep.is_file():
        grid = _sweep_grid(sweep)
        keys = [k for k in grid if k != "seed" and len(grid[k]) > 1]
        if keys:
            return keys
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if k not in IGNORED
            and len({_hashable(r.config.get(k)) for r in runs}) > 1]


def group(runs: list[Run], fields: list[str]) -> list[Row]:
    rows: dict[tuple[Any, ...], Row] = {}
    for r in runs:
        key = tuple(_hashable(r.config.get(f)) for f in fields)
        rows.setdefault(key, Row(key)).runs.append(r)

    def order(row: Row):
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in row.key)

    return sorted(rows.values(), key=order)


def _fmt(ms: tuple[float, float, int] | None, scale: float = 1.0, digits: int = 2) -> str:
    if ms is None:
        return "–"
    mean, std, n = ms
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if n > 1 else "")


def markdown(root: Path, rows: list[Row], fields: list[str], unfinished: int) -> str:
    names = fields or ["run"]
    head = [*names, "runs", "test acc (%)", "best acc (%)", "saved MiB", "peak RSS MiB", "CUDA peak MiB", "s/iter"]
    lines = [f"# Report: {root}", "",
             "Mean ± sample standard deviation over the runs of each row (seeds).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mib = 1 / 2**20
    for row in rows:
        done = [r for r in row.runs if r.summary is not None]
        label = list(row.key) if fields else [row.runs[0].folder.name]
        cells = [*(str(v) for v in label), f"{len(done)}",
                 _fmt(row.mean_std("test_accuracy"), 100), _fmt(row.mean_std("best_test_accuracy"), 100),
                 _fmt(row.mean_std("peak_saved_bytes"), mib), _fmt(row.mean_std("peak_rss_bytes"), mib, 0),
                 _fmt(row.mean_std("cuda_peak_bytes"), mib, 0), _fmt(row.mean_std("s_per_iter"), 1.0, 4)]
        lines.append("| " + " | ".join(cells) + " |")
    if unfinished:
        lines += ["", f"{unfinished} run(s) unfinished (no summary.json) are left out of the numbers."]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def plot(rows: list[Row], fields: list[str], x: str, folder: Path) -> list[Path]:
    """accuracy_vs_<x>.png and memory_vs_<x>.png: one line per value of the other fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write_bytes

    xi = fields.index(x)
    others = [f for f in fields if f != x]
    xs_all = sorted({row.key[xi] for row in rows}, key=lambda v: (not isinstance(v, (int, float)), str(v)
                                                                   if not isinstance(v, (int, float)) else v))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    position = {v: (v if numeric else i) for i, v in enumerate(xs_all)}
    series: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        series.setdefault(tuple(v for i, v in enumerate(row.key) if i != xi), []).append(row)
    written = []
    panels = [("accuracy", [("test_accuracy", 100.0, "test accuracy (%)")]),
              ("memory", [("peak_saved_bytes", 1 / 2**20, "saved for backward (MiB)"),
                          ("cuda_peak_bytes", 1 / 2**20, "CUDA peak allocated (MiB)")])]
    for name, metrics in panels:
        metrics = [m for m in metrics if any(r.values(m[0]) for r in rows)]
        if not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
        for ax, (metric, scale, label) in zip(axes[0], metrics):
            for other, members in sorted(series.items(), key=lambda kv: str(kv[0])):
                pts = [(position[r.key[xi]], r.mean_std(metric)) for r in members]
                pts = sorted((p, ms) for p, ms in pts if ms is not None)
                if not pts:
                    continue
                legend = ", ".join(f"{f.rsplit('.', 1)[-1]}={v}" for f, v in zip(others, other)) or None
                ax.errorbar([p for p, _ in pts], [ms[0] * scale for _, ms in pts],
                            yerr=[ms[1] * scale for _, ms in pts], marker="o", capsize=3, label=legend)
            ax.set_xlabel(x)
            ax.set_ylabel(label)
            if not numeric:
                ax.set_xticks(list(range(len(xs_all))), [str(v) for v in xs_all])
            elif len(xs_all) <= 12:
                ax.set_xticks(xs_all)
            ax.grid(alpha=0.3)
            if others:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{name}_vs_{_slug(x)}.png"
        try:
            atomic_write_bytes(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
        finally:
            plt.close(fig)
        written.append(path)
    return written


def write_report(root: Path, out: Path | None = None, x: str | None = None) -> tuple[Path, list[Path], str | None]:
    """Write ``report.md`` (and plots) for the runs under ``root``.

    Returns the report path, the plot paths and a note (why plots are missing), if any.
    """
    from ..checkpoint import atomic_write_text

    if not root.is_dir():
        raise UserError(f"report: {root} is not a folder")
    runs = find_runs(root)
    finished = [r for r in runs if r.summary is not None]
    if not finished:
        raise UserError(f"report: no finished runs under {root} (no {SUMMARY} beside a {CONFIG})")
    fields = swept_fields(root, finished)
    if x is not None and x not in fields:
        raise UserError(f"report --x {x}: not a swept field; swept: {', '.join(fields) or 'none'}")
    rows = group(finished, fields)
    # before any plot is drawn; an unwritable DIR or --out fails in one line
    out = check_writable(out or root, "--out" if out is not None else "report: DIR", folder=True)
    plots: list[Path] = []
    note = None
    if fields:
        x = x or next((f for f in fields if all(isinstance(r.key[fields.index(f)], (int, float)) for r in rows)),
                      fields[0])
        try:
            plots = plot(rows, fields, x, out)
        except ImportError:
            note = "plots skipped: matplotlib is not installed (pip install 'leanspike[plots]')"
    else:
        note = "no swept field (all runs share one config): no plots"
    text = markdown(root, rows, fields, len(runs) - len(finished))
    if plots:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    if note:
        text += f"\n_{note}_\n"
    report = out / "report.md"
    atomic_write_text(report, text)
    return report, plots, note
