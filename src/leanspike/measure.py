"""Measuring what training methods change: saved-activation bytes, RSS, CUDA memory, time.

:class:`SavedTensorMeter` counts the bytes autograd holds for backward, through
``torch.autograd.graph.saved_tensors_hooks``: each storage is counted once however many
tensors view it, and released when the last saved reference to it is freed (backward
without ``retain_graph`` or the graph's deletion). Storages of parameters and buffers
are left out: they exist whatever the method, and counting them hides the difference.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class _Handle:
    """What the pack hook returns; its death releases the storage's bytes."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key, meter: "SavedTensorMeter | None") -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        if self.meter is not None:
            self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager tracking current and peak bytes saved for backward.

    >>> with SavedTensorMeter(exclude=[model]) as meter:
    ...     loss = model(x).sum(); loss.backward()
    >>> meter.peak_bytes
    """

    def __init__(self, exclude: Iterable[nn.Module | torch.Tensor] = ()) -> None:
        """``exclude``: modules (their parameters and buffers) and tensors (e.g. the input
        batch, which exists whatever the method) whose storages are not counted."""
        self._excluded: set[tuple[str, int]] = set()
        for item in exclude:
            tensors = [item] if isinstance(item, torch.Tensor) else [*item.parameters(), *item.buffers()]
            for t in tensors:
                self._excluded.add(_storage_key(t))
        self._refs: dict[tuple[str, int], int] = {}
        self._sizes: dict[tuple[str, int], int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        key = _storage_key(tensor)
        if key in self._excluded or tensor.device.type == "meta":
            return _Handle(tensor, key, None)
        if key in self._refs:
            self._refs[key] += 1
        else:
            self._refs[key] = 1
            size = tensor.untyped_storage().nbytes()
            self._sizes[key] = size
            self.current_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return _Handle(tensor, key, self)

    @staticmethod
    def _unpack(handle: _Handle) -> torch.Tensor:
        return handle.tensor

    def _release(self, key) -> None:
        count = self._refs.get(key)
        if count is None:
            return
        if count > 1:
            self._refs[key] = count - 1
        else:
            del self._refs[key]
            self.current_bytes -= self._sizes.pop(key)

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def peak_rss_bytes() -> int:
    """The process's peak resident set size (VmHWM on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs).

    Returns False where that is not possible; the peak then covers the whole process.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_description() -> dict[str, str]:
    """The CPU's model name and the vector instructions PyTorch's kernels use on it: timings
    and kernel picks differ between machines with the same core count (NNPACK against oneDNN
    flips with AVX-512), so results record both."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_capability": cpu_capability()}


def cpu_capability() -> str:
    """The widest vector instructions PyTorch's CPU kernels use here ("AVX2", "AVX512", ...)."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else "unknown"


def cuda_peak_bytes(device: torch.device | str | None = None) -> int | None:
    """``torch.cuda.max_memory_allocated`` when CUDA is in use, else None."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated(device))


def reset_cuda_peak(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Timing:
    median_s: float
    times_s: list[float]


def time_iterations(fn: Callable[[], object], warmup: int = 2, iterations: int = 5,
                    sync_cuda: bool = False) -> Timing:
    """Median wall time of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        if sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), times)
