"""SLTT and SLTT-K (Meng et al., 2023): spatial learning through time.

SLTT drops every temporal route of the backward graph: the state entering each step
is detached, and each step's loss / T is back-propagated at once, so only one step's
graph is ever alive (memory constant in T). Gradients accumulate over the steps and
the optimizer steps once per batch. SLTT-K back-propagates at only K distinct steps
drawn per batch; the other steps run under ``torch.no_grad`` and build no graph.
"""

from __future__ import annotations

import torch

from ..engine import Schedule, split_intervals
from ..losses import WindowLoss
from .base import Method, check_not_above_T, check_positive_int


class SLTT(Method):
    """SLTT; ``steps_per_backward = c`` back-propagates ``c`` steps at once (default 1, the paper's).

    The gradient is the same for every ``c`` (up to float rounding): no gradient crosses a
    step in SLTT, and the weights change only once per batch. A larger ``c`` runs each
    layer's kernels on ``c·B`` samples at once (faster where small batches are slow) and
    keeps ``c`` steps of activations alive instead of one: memory ∝ c, still constant in T.
    """

    name = "sltt"

    def __init__(self, loss: WindowLoss | None = None, steps_per_backward: int = 1) -> None:
        super().__init__(loss)
        self.steps_per_backward = check_positive_int("steps_per_backward", steps_per_backward)

    def _check_loss(self, schedule, total_steps):
        if self.loss.decomposes != "step":
            raise ValueError(f"{self.name} needs a per-step loss, got {self.loss!r}")

    def schedule(self, total_steps: int) -> Schedule:
        return Schedule(split_intervals(total_steps, self.steps_per_backward), temporal_routes=False)

    def __repr__(self) -> str:
        c = f", steps_per_backward={self.steps_per_backward}" if self.steps_per_backward != 1 else ""
        return f"SLTT(loss={self.loss!r}{c})"


class SLTTK(SLTT):
    """SLTT with backward at ``K`` steps sampled per batch.

    ``scale="T"`` keeps each step's loss / T (the paper's code; default);
    ``scale="K"`` uses / K, an unbiased estimate of SLTT's full gradient.
    ``generator`` makes the choice of steps reproducible.
    """

    name = "sltt-k"

    def __init__(self, K: int, loss: WindowLoss | None = None, scale: str = "T",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(loss)  # one step per backward: the K steps are not contiguous
        self.K = check_positive_int("K", K)
        if scale not in ("T", "K"):
            raise ValueError(f"scale must be 'T' or 'K', got {scale!r}")
        self.scale = scale
        self.generator = generator
        self.last_steps: list[int] = []

    def validate(self, total_steps: int) -> None:
        check_not_above_T("K", self.K, total_steps)  # without drawing steps
        self._check_loss(None, total_steps)

    def schedule(self, total_steps: int) -> Schedule:
        check_not_above_T("K", self.K, total_steps)
        chosen = torch.randperm(total_steps, generator=self.generator)[: self.K]
        self.last_steps = sorted(int(t) for t in chosen)
        scale = 1.0 if self.scale == "T" else total_steps / self.K
        return Schedule(split_intervals(total_steps, 1), graph_intervals=set(self.last_steps), loss_scale=scale)

    def __repr__(self) -> str:
        return f"SLTTK(K={self.K}, scale={self.scale!r}, loss={self.loss!r})"
