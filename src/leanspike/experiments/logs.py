"""What a run leaves in its results folder besides checkpoints: per-epoch metrics as
JSONL and CSV (and TensorBoard events when the package is installed), the environment
and the summary.

The metric files are rewritten atomically from the full history every epoch, so after
a crash and ``--resume`` they hold exactly one row per finished epoch, never a torn or
duplicated line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_text
from ..errors import UserError
from ..measure import cpu_description

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
TENSORBOARD = "tensorboard"


def check_writable(path: str | Path, what: str, folder: bool = False) -> Path:
    """Fail before any work when results could not be written to ``path`` (a file, or a
    folder if ``folder``): its folder is created now, so a long run does not end in an OS
    error. Raises :class:`UserError` naming ``what`` (e.g. ``--out``) and the path."""
    path = Path(path).expanduser()
    target = path if folder else path.parent
    try:
        if not folder and path.is_dir():
            raise UserError(f"{what} {path}: is a folder, expected a file path")
        target.mkdir(parents=True, exist_ok=True)
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(target))
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, written atomically; the folder is created if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


class MetricsLog:
    """Per-epoch rows → metrics.jsonl, metrics.csv and (optionally) TensorBoard."""

    def __init__(self, folder: Path, tensorboard: bool, first_epoch: int = 0) -> None:
        self.folder = folder
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra: pip install leanspike[tensorboard]
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(folder / TENSORBOARD), purge_step=first_epoch + 1)

    def write(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.folder / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in rows))
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        atomic_write_text(self.folder / METRICS_CSV, buf.getvalue())
        if self.writer is not None and rows:
            last = rows[-1]
            for key, value in last.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, last["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def environment(device: torch.device, world_size: int, backend: str | None) -> dict[str, Any]:
    """Versions and hardware, so a result can be traced to where it was made."""
    from .. import __version__ as leanspike_version

    env: dict[str, Any] = {
        "leanspike": leanspike_version,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        **cpu_description(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "backend": backend,
    }
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env
