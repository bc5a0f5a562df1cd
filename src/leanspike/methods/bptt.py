"""BPTT and truncated BPTT: temporal routes kept inside intervals of k steps."""

from __future__ import annotations

from ..engine import Schedule, split_intervals
from ..losses import WindowLoss
from .base import Method, check_not_above_T, check_positive_int


class BPTT(Method):
    """Backpropagation through time: one backward over all T steps, one update."""

    name = "bptt"

    def schedule(self, total_steps: int) -> Schedule:
        return Schedule([(0, total_steps)])


class TBPTT(Method):
    """Truncated BPTT with intervals of ``k`` steps.

    State is detached between intervals and backward runs after each one. When k does
    not divide T the last interval is shorter (T mod k steps). By default gradients of
    all intervals accumulate into one optimizer step per batch (``update="batch"``), so
    ``TBPTT(k=T)`` is BPTT and ``TBPTT(k=1)`` is SLTT; ``update="interval"`` steps the
    optimizer after every interval, as classic truncated BPTT in RNNs does.
    """

    name = "tbptt"

    def __init__(self, k: int, loss: WindowLoss | None = None, update: str = "batch") -> None:
        super().__init__(loss)
        self.k = check_positive_int("k", k)
        if update not in ("batch", "interval"):
            raise ValueError(f"update must be 'batch' or 'interval', got {update!r}")
        self.update = update

    def schedule(self, total_steps: int) -> Schedule:
        check_not_above_T("k", self.k, total_steps)
        return Schedule(split_intervals(total_steps, self.k), update_per_interval=self.update == "interval")

    def __repr__(self) -> str:
        return f"TBPTT(k={self.k}, update={self.update!r}, loss={self.loss!r})"
