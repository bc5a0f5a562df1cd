"""Sweeps: a grid over any config fields, one results folder per point.

The grid is the preset's ``sweep`` section, updated by the command line. Every point
is checked before the first run starts, so a typo in run 17 does not surface after
16 hours. Re-running the same sweep skips the finished points (``summary.json``
present) and resumes the unfinished ones from their checkpoints.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from . import config as C

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Point:
    run_id: str
    overrides: tuple[tuple[str, Any], ...]
    config: C.ExperimentConfig


def _label(key: str, keys: list[str]) -> str:
    short = key.rsplit(".", 1)[-1]
    clash = sum(k.rsplit(".", 1)[-1] == short for k in keys) > 1
    return key if clash else short


def _clean(value: Any) -> str:
    text = "null" if value is None else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _check_device(cfg: C.ExperimentConfig) -> None:
    """A CUDA device on a machine without CUDA fails before the first run, as ``train``
    does (its own check), not run by run."""
    if cfg.device.startswith("cuda"):
        from ..trainer import _resolve_device

        _resolve_device(cfg, 0)


def expand(base: C.ExperimentConfig, grid: dict[str, list[Any]], skip_invalid: bool = False,
           warn: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> list[Point]:
    """Every point of the grid (keys in order, last varying fastest), validated."""
    if not grid:
        raise UserError("sweep: the grid is empty; give --grid FIELD=V1,V2 or use a preset with a sweep section")
    for key, values in grid.items():
        if key != "seed" and key not in C.field_names():
            raise UserError(f"sweep: unknown config field {key}")
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep: {key} must list at least one value")
    keys = list(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = tuple(zip(keys, combo))
        run_id = "__".join(f"{_label(k, keys)}={_clean(v)}" for k, v in overrides)
        cfg = C.apply_overrides(base, list(overrides) + [("sweep", {})], where=f"sweep run {run_id}: ")
        try:
            C.validate(cfg)
            _check_device(cfg)
        except UserError as exc:
            if not skip_invalid:
                raise UserError(f"sweep run {run_id}: {exc}") from None
            warn(f"sweep: skipping {run_id}: {exc}")
            continue
        points.append(Point(run_id, overrides, cfg))
    return points


def parse_grid(entries: list[str]) -> dict[str, list[Any]]:
    """``["method.k=1,2,5", "seed=0,1"]`` → ``{"method.k": [1, 2, 5], "seed": [0, 1]}``."""
    grid: dict[str, list[Any]] = {}
    for text in entries:
        if "=" not in text or not text.partition("=")[0].strip():
            raise UserError(f"--grid {text!r}: expected FIELD=V1,V2,..., e.g. method.k=1,2,5")
        key, values = C.parse_assignment(text)
        raw = text.partition("=")[2]
        if not isinstance(values, list):
            values = [C.parse_assignment(f"{key}={part}")[1] for part in raw.split(",")] if raw.strip() else []
        if not values:
            raise UserError(f"--grid {text!r}: expected FIELD=V1,V2,...")
        grid[key] = values
    return grid


#: fields a run may change between sweeps without becoming another experiment
UNCOMPARED = ("data.root", "data.workers", "data.test_batch_size", "device", "tensorboard", "name", "description",
              "source", "notes", "sweep")


def check_existing(points: list[Point], out: Path) -> None:
    """Refuse to skip or resume a run folder that holds another experiment than its grid point."""
    from .logs import CONFIG
    from .presets import read_yaml

    for point in points:
        path = out / point.run_id / CONFIG
        if not path.is_file():
            continue
        stored = C.to_dict(C.from_dict(read_yaml(path, f"sweep run {point.run_id}"), f"{path}: "))
        diffs = [d for d in C.differences(C.to_dict(point.config), stored) if d not in UNCOMPARED]
        if diffs:
            raise UserError(f"sweep run {point.run_id}: {path.parent} was made with another {diffs[0]} "
                            f"({C.get_path(C.from_dict(stored), diffs[0])!r}, now "
                            f"{C.get_path(point.config, diffs[0])!r}); use a new --out")


def run_sweep(points: list[Point], out: Path, train: Callable[..., dict[str, Any]], progress: bool = True,
              log: Callable[[str], None] = lambda msg: print(msg, flush=True)) -> dict[str, list[str]]:
    """Run every point in ``out/<run id>``: skip finished ones, resume unfinished ones.

    Returns run ids by outcome: ``done`` (already finished), ``ran``, ``failed``.
    """
    from .logs import CONFIG, SUMMARY

    check_existing(points, out)
    outcome: dict[str, list[str]] = {"done": [], "ran": [], "failed": []}
    for i, point in enumerate(points, 1):
        folder = out / point.run_id
        if (folder / SUMMARY).is_file():
            log(f"[{i}/{len(points)}] {point.run_id}: finished before, skipped")
            outcome["done"].append(point.run_id)
            continue
        resume = (folder / CONFIG).is_file()
        log(f"[{i}/{len(points)}] {point.run_id}: {'resuming' if resume else 'starting'}")
        try:
            summary = train(point.config, out=folder, resume=resume, progress=progress)
        except UserError as exc:
            log(f"[{i}/{len(points)}] {point.run_id}: failed: {exc}")
            outcome["failed"].append(point.run_id)
            continue
        acc = summary.get("test_accuracy")
        log(f"[{i}/{len(points)}] {point.run_id}: test accuracy {acc if acc is None else f'{acc:.4f}'}")
        outcome["ran"].append(point.run_id)
    return outcome
