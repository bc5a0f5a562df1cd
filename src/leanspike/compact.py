"""Binary tensors saved for backward in 1 byte per element instead of 4.

Spikes are 0 or 1, and spikes after a per-sequence dropout are 0 or ``1/(1 − p)``;
whatever saves them for backward (the next layer's weight gradient, a pooling, the
dropout product) would keep them as floats. Producers of such tensors *mark* them:

- :func:`mark_binary`: every element is 0 or ``scale``. :class:`CompactSaved` stores the
  tensor as ``bool`` and restores it bit for bit (``bool → dtype``, times ``scale``).
- :func:`mark_derived`: the tensor is ``fn(source)`` for a marked ``source`` and a pure
  ``fn`` (a view, a pooling). It is stored as the recipe: the compact source plus
  ``fn``, recomputed in backward (same function, same input: the same bits).

Both compact forms of one tensor are made once and shared by every op that saves it
(the dropout mask is saved at every step but stored once). A mark is trusted only
while the tensor is unchanged: it records the version counter, and an in-place change
voids it. Hooks active when :class:`CompactSaved` is entered (e.g.
:class:`~leanspike.measure.SavedTensorMeter`) keep working: the compact form is what
they receive, so they see (and count) the bytes really kept.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

_ATTR = "_leanspike_mark"


def mark_binary(t: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Declare that every element of ``t`` is exactly 0 or ``scale``; returns ``t``.

    ``scale`` is 1.0 or a 0-dim tensor in ``t``'s dtype holding the exact value.
    """
    if not isinstance(scale, torch.Tensor) and scale != 1.0:
        scale = torch.tensor(scale, dtype=t.dtype, device=t.device)
    setattr(t, _ATTR, ("binary", scale, t._version))
    return t


def mark_derived(t: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor) -> torch.Tensor:
    """Declare ``t == fn(source)`` bit for bit, ``fn`` pure; no-op unless ``source`` is marked
    (or when ``t`` is ``source`` itself: a view op may return its input)."""
    if t is not source and _mark(source) is not None:
        setattr(t, _ATTR, ("derived", fn, source, t._version))
    return t


def _mark(t: torch.Tensor) -> tuple | None:
    mark = getattr(t, _ATTR, None)
    if mark is None or mark[-1] != t._version:
        return None
    return mark


def _valid(mark: tuple) -> bool:
    """A binary mark, or a derived one whose chain of sources is still intact."""
    for _ in range(64):  # a chain of views and poolings; never a cycle (see mark_derived)
        if mark[0] != "derived":
            return True
        mark = _mark(mark[2])  # type: ignore[assignment]
        if mark is None:
            return False
    return False


def binary_scale(t: torch.Tensor) -> float | torch.Tensor | None:
    """The scale ``t`` was marked binary with, or None when it is not (or no longer) so marked."""
    mark = _mark(t)
    return mark[1] if mark is not None and mark[0] == "binary" else None


def is_marked(t: torch.Tensor) -> bool:
    return _mark(t) is not None


class _Bits:
    """A binary tensor kept as bool; ``payload`` is what the outer hooks made of the bools.

    ``original`` is a weak reference: while the tensor is alive anyway and unchanged (a
    dropout mask held by its module), backward uses it instead of restoring a copy.
    """

    __slots__ = ("payload", "scale", "dtype", "original", "version")

    def __init__(self, payload: Any, scale: float | torch.Tensor, t: torch.Tensor) -> None:
        self.payload, self.scale, self.dtype = payload, scale, t.dtype
        self.original, self.version = weakref.ref(t), t._version


class _Recipe:
    """``fn(source)`` with the source in compact form."""

    __slots__ = ("fn", "source")

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], source: Any) -> None:
        self.fn, self.source = fn, source


class _Outer:
    """An unmarked tensor as the outer hooks packed it."""

    __slots__ = ("payload",)

    def __init__(self, payload: Any) -> None:
        self.payload = payload


class CompactSaved:
    """Context manager: while active, marked tensors saved for backward are kept compact."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[weakref.ref, int, Any]] = {}
        self._outer: tuple | None = None
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _compact(self, t: torch.Tensor, mark: tuple) -> Any:
        key = id(t)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        if mark[0] == "binary":
            bits = t.ne(0)
            packed: Any = _Bits(bits if self._outer is None else self._outer[0](bits), mark[1], t)
        else:
            source = mark[2]
            packed = _Recipe(mark[1], self._compact(source, _mark(source)))  # type: ignore[arg-type]
        self._cache[key] = (weakref.ref(t, lambda _, k=key: self._cache.pop(k, None)), t._version, packed)
        return packed

    def _pack(self, t: torch.Tensor) -> Any:
        mark = _mark(t) if t.dtype.is_floating_point else None
        if mark is not None and _valid(mark) and (mark[0] == "binary" or self._recipe_pays(t, mark)):
            return self._compact(t, mark)
        return t if self._outer is None else _Outer(self._outer[0](t))

    def _recipe_pays(self, t: torch.Tensor, mark: tuple) -> bool:
        """A recipe costs its root's bits (nothing when they are kept already) and a recomputation;
        keep ``t`` itself when that is no bigger (e.g. a 2×2 average of spikes: N/4 floats = N bits)."""
        root = mark[2]
        while True:
            root_mark = _mark(root)
            if root_mark is None or root_mark[0] == "binary":
                break
            root = root_mark[2]
        hit = self._cache.get(id(root))
        if hit is not None and hit[0]() is root:
            return True
        return t.numel() * t.element_size() > root.numel()

    def _restore(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, _Recipe):
            return packed.fn(self._restore(packed.source))
        original = packed.original()
        if original is not None and original._version == packed.version:
            return original
        bits = packed.payload if self._outer is None else self._outer[1](packed.payload)
        scale = packed.scale
        if isinstance(scale, torch.Tensor):
            return torch.where(bits, scale, 0.0)  # exactly 0 or the scale, in one pass
        return bits.to(packed.dtype)

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, (_Bits, _Recipe)):
            return self._restore(packed)
        if isinstance(packed, _Outer):
            return self._outer[1](packed.payload)  # type: ignore[index]
        return packed

    def __enter__(self) -> "CompactSaved":
        self._outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._cache.clear()
