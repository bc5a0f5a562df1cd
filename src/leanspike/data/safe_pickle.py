"""A pickle reader for CIFAR's python batch files that cannot run code.

The batches hold dicts, lists, strings/bytes, ints and numpy arrays. An ordinary
``pickle.load`` would call any global a file names (``os.system`` included), so this
Unpickler resolves only the few globals that rebuild numpy arrays.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import UserError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
})


class RefusedPickle(UserError):
    """The file asked to call something that is not needed to rebuild an array."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; everything else is refused."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            import importlib

            if module == "numpy.core.multiarray":  # numpy 2 moved it; avoid the deprecation shim
                try:
                    return getattr(importlib.import_module("numpy._core.multiarray"), name)
                except ImportError:
                    pass
            return getattr(importlib.import_module(module), name)
        raise RefusedPickle(f"{self.source}: refused to load global {module}.{name}; "
                            "a CIFAR batch holds only numpy arrays, lists, dicts and strings")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle(f"{self.source}: refused persistent id {pid!r} in pickle")


def load_restricted(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; corrupt data gives a UserError."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except RefusedPickle:
            raise
        except Exception as exc:  # truncated/corrupt pickles raise many kinds of errors
            raise UserError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
