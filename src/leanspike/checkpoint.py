"""Checkpoints that survive crashes and load without unpickling code.

A checkpoint is a plain dict of tensors and builtin containers (RNG states are stored
as the uint8 tensors torch returns), so ``torch.load(path, weights_only=True)`` reads
it. It is written atomically: to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one (and the folder fsynced), so a crash at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

FORMAT = "leanspike-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files (``.<name>.<random>.tmp``) that :func:`atomic_write_bytes` leaves
    when its process is killed mid-write (SIGKILL cannot be caught); nothing ever reads them.
    For a run folder being resumed, where no other writer may be at work. Returns them."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plain containers and tensors) atomically as a leanspike checkpoint."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(path, lambda f: torch.save(data, f))


def checkpoint_path(path: str | Path) -> Path:
    """A run folder means its ``checkpoint.pt``; a file means itself."""
    p = Path(path).expanduser()
    return p / FILENAME if p.is_dir() else p


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Read and check a leanspike checkpoint; a one-line UserError for anything else."""
    p = checkpoint_path(path)
    if not p.exists():
        raise UserError(f"{what} {p}: no such file")
    if not p.is_file():
        raise UserError(f"{what} {p}: not a file")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UserError(f"{what} {p}: cannot read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise UserError(f"{what} {p} is corrupt or not a torch checkpoint (not a torch zip archive)")
    try:  # torch.load does not check the archive's checksums: a damaged byte would load silently
        with zipfile.ZipFile(p) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{what} {p} is corrupt or not a torch checkpoint (truncated or damaged archive: "
                        f"{_one_line(exc)})") from None
    if damaged is not None:
        raise UserError(f"{what} {p} is corrupt or not a torch checkpoint (checksum mismatch in {damaged})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {p} is corrupt or not a plain torch checkpoint (it holds something other than "
                        "tensors and plain containers)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, AttributeError, ImportError,
            IndexError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(reason) > 100:
            reason = reason[:97] + "..."
        raise UserError(f"{what} {p} is corrupt or not a torch checkpoint ({reason})") from None
    except OSError as exc:
        raise UserError(f"{what} {p}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{what} {p} is not a leanspike checkpoint (no '{FORMAT}' marker); "
                        "expected a file written by `leanspike train`")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise UserError(f"{what} {p} has format version {data.get('version')!r}; this leanspike reads "
                        f"up to {VERSION}")
    if not isinstance(data.get("model"), dict):
        raise UserError(f"{what} {p} holds no model weights")
    return data


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The global RNG states torch uses (CPU, and CUDA when it is initialised)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def generator_state(gen: torch.Generator | None) -> torch.Tensor | None:
    return None if gen is None else gen.get_state()


def set_generator_state(gen: torch.Generator | None, state: torch.Tensor | None) -> None:
    if gen is not None and state is not None:
        gen.set_state(state)


def _kind(dtype: torch.dtype) -> str:
    """What ``load_state_dict`` may convert between: floats among themselves, not complex to real."""
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "bool" \
        if dtype == torch.bool else "integer"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def state_mismatch(module: torch.nn.Module, state: dict[str, Any]) -> str | None:
    """Why ``state`` does not load into ``module`` (in one line), or None if it fits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    kinds = [f"{k} is {type(state[k]).__name__}" for k in own if k in state and not isinstance(state[k], torch.Tensor)]
    kinds += [f"{k} {state[k].dtype} vs {v.dtype}" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and _kind(state[k].dtype) != _kind(v.dtype)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                         ("not a tensor of the right kind", kinds)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None
