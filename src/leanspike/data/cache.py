"""An on-disk cache of integrated frames, keyed by a hash of every parameter.

Changing any parameter (integration, T, Δt, size, source file, its size and mtime, the
segment, the format version) changes the key, so a stale entry is never reused. Files
are written atomically (temp file in the same folder, fsync, ``os.replace``) as plain
``.npz`` read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def cache_key(params: dict) -> str:
    """A stable hex digest of ``params`` (JSON with sorted keys)."""
    blob = json.dumps({"version": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def source_stamp(path: Path) -> dict:
    """What identifies a source file's content cheaply: absolute path, size, mtime."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def atomic_write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz at ``path`` so that readers see all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_frames(path: Path, frames: np.ndarray, binary: bool) -> None:
    """Binary frames are bit-packed (8× smaller); counts are stored as they are."""
    if binary:
        atomic_write(path, {"packed": np.packbits(frames.astype(bool).ravel()),
                            "shape": np.asarray(frames.shape, np.int64)})
    else:
        atomic_write(path, {"frames": frames})


def load_frames(path: Path) -> np.ndarray | None:
    """The cached frames, or None when absent or unreadable (then they are recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "packed" in z:
                shape = tuple(int(s) for s in z["shape"])
                return np.unpackbits(z["packed"], count=int(np.prod(shape))).reshape(shape)
            return z["frames"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
