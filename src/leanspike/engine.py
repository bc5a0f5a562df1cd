"""The one forward/backward engine that every training method schedules.

A method is described by a :class:`Schedule`: how the T steps are cut into
intervals (temporal routes survive only inside an interval), which intervals build a
graph at all, whether the optimizer steps after every interval or once per batch, and
how the network is split into gradient-isolated blocks (each with a head that turns its
output into a local prediction; the last block's head is the network's own output).

Per interval, the engine detaches all state and then, block by block, runs the block
over the interval's steps (with or without a graph), scores its head's window with the
loss and calls backward on it, which frees that block's graph before the next block
runs on the detached output; when the schedule says so, it then steps the optimizer.
One block (every non-local method) means one backward per interval.

When every block and head supports it (:func:`~leanspike.multistep.supports_sequence`),
an interval runs layer by layer over all its steps (:mod:`leanspike.multistep`), and
consecutive intervals without a graph (SLTT-K's skipped steps) run as one; a one-step
interval on a small input runs step by step (:func:`~leanspike.multistep.pays_off`). While it
runs, binary tensors saved for backward are kept as packed bits (:mod:`leanspike.compact`), and
the Winograd transforms of 3×3 kernels are made once per batch (:mod:`leanspike.winograd`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .compact import CompactSaved, mark_derived
from .losses import WindowLoss
from .multistep import (NO_GRAD_CHUNK, WeightGradSums, each_module_once, part_steps, pays_off, run_sequence,
                        supports_sequence)
from .neuron import backward_reads_carry
from .state import detach_states, keep_temporal_routes, reset_states
from .winograd import KernelCache


@dataclass
class StepResult:
    """What one batch of training returns."""

    loss: float  # the network output's loss, summed over the batch's windows
    predictions: torch.Tensor  # [B] argmax of the time-averaged output
    mean_output: torch.Tensor  # [B, C] time-averaged output (detached)
    backward_passes: int
    optimizer_steps: int
    local_losses: list[float] = field(default_factory=list)  # per block, local methods only


@dataclass
class Schedule:
    intervals: list[tuple[int, int]]
    graph_intervals: set[int] | None = None  # None: every interval builds a graph
    update_per_interval: bool = False
    loss_scale: float = 1.0
    #: False: inside an interval, gradients flow only within each step (SLTT over several steps)
    temporal_routes: bool = True

    def builds_graph(self, index: int) -> bool:
        """Whether interval ``index`` runs with a graph (and a backward)."""
        return self.graph_intervals is None or index in self.graph_intervals


def split_intervals(total_steps: int, k: int) -> list[tuple[int, int]]:
    """Cut ``range(T)`` into intervals of k steps; the last is shorter if k ∤ T."""
    return [(t0, min(t0 + k, total_steps)) for t0 in range(0, total_steps, k)]


def check_inputs(inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Validate ``[T, B, ...]`` inputs against ``[B]`` targets; return T."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 3:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs shaped {shape} have no time axis: expected [T, B, ...] (at least 3 dims)")
    if targets.dim() != 1 or inputs.shape[1] != targets.shape[0]:
        raise ValueError(
            f"inputs shaped {tuple(inputs.shape)} have no time axis in front: expected "
            f"[T, B, ...] with B = len(targets) = {targets.shape[0] if targets.dim() else 'scalar'}, "
            f"got shape[1] = {inputs.shape[1]}")
    if inputs.shape[0] < 1:
        raise ValueError("inputs hold T = 0 time steps")
    return int(inputs.shape[0])


@torch.no_grad()
def infer(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Inference over all T steps of ``[T, B, ...]``: the time-averaged output ``[B, C]``."""
    if inputs.dim() < 2 or inputs.shape[0] < 1:
        raise ValueError(f"inputs shaped {tuple(inputs.shape)}: expected [T, B, ...] with T >= 1")
    reset_states(model)
    total = None
    sequence = supports_sequence(model)
    steps = part_steps(inputs, graph=False) if sequence else 1
    for t0 in range(0, inputs.shape[0], steps):
        outs = run_sequence(model, inputs[t0:t0 + steps], kept_input=True) if sequence else model(inputs[t0]).unsqueeze(0)
        for out in outs:
            total = out if total is None else total + out
    reset_states(model)
    assert total is not None
    return total / inputs.shape[0]


def _float_sum(values: list[torch.Tensor]) -> float:
    """``sum(float(v) for v in values)`` with one device read instead of one per value."""
    if len({v.dtype for v in values}) == 1 and all(v.dim() == 0 for v in values):
        return sum(torch.stack(values).tolist())
    return sum(float(v) for v in values)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@contextlib.contextmanager
def _temporal_routes(modules: list[nn.Module], keep: bool):
    """The schedule's temporal routes for one run; afterwards, whatever the run did or raised,
    the modules are left as a plain forward expects them (routes kept)."""
    keep_temporal_routes(*modules, keep=keep)
    try:
        yield
    finally:
        keep_temporal_routes(*modules, keep=True)


class Engine:
    """Runs one batch under a schedule over ``blocks`` (with their ``heads``)."""

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[nn.Module | None]) -> None:
        if len(blocks) != len(heads):
            raise ValueError("every block needs a head (None for the network's own output)")
        self.blocks, self.heads = list(blocks), list(heads)

    def modules(self) -> list[nn.Module]:
        return [m for m in (*self.blocks, *self.heads) if m is not None]

    def supports_sequence(self) -> bool:
        """True when every block and head can run layer by layer over several steps (and no
        module is shared between them)."""
        return all(supports_sequence(m) for m in (*self.blocks, *self.heads)) and each_module_once(*self.modules())

    @staticmethod
    def _parts(inputs: torch.Tensor, sequence: bool, graph: bool) -> list[torch.Tensor]:
        """The pieces an interval's input is fed in: single steps ``[B, ...]``, or balanced
        ``[t, B, ...]`` parts (:func:`~leanspike.multistep.part_steps`)."""
        if not sequence:
            return list(inputs.unbind(0))
        steps = part_steps(inputs, graph)
        return [inputs[t0:t0 + steps] for t0 in range(0, inputs.shape[0], steps)]

    def _block(self, b: int, parts: list[torch.Tensor], sequence: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Block ``b`` over every piece in order (its state carries from one to the next):
        the block's outputs per piece, and its head's output over the interval ``[t, B, C]``."""
        block, head = self.blocks[b], self.heads[b]
        if sequence:
            outs = [run_sequence(block, x, kept_input=b == 0) for x in parts]
            scored = outs if head is None else [run_sequence(head, x) for x in outs]
            return outs, scored[0] if len(scored) == 1 else torch.cat(scored)
        outs = [block(x) for x in parts]
        scored = outs if head is None else [head(x) for x in outs]
        return outs, torch.stack(scored)

    @staticmethod
    def _detached(outs: list[torch.Tensor], sequence: bool) -> list[torch.Tensor]:
        """A block's outputs as the next block's inputs: no gradient crosses a block boundary
        (binary marks survive, so the next block still saves them compactly)."""
        return [mark_derived(x.detach(), _same, x) if sequence else x.detach() for x in outs]

    @staticmethod
    def _chunks(schedule: Schedule, sequence: bool, max_steps: int | None = None) -> list[list[int]]:
        """Interval indices run together: consecutive graph-free intervals are merged when
        running layer by layer and no update falls between them, up to ``max_steps`` steps
        (None: no limit; parts bound each layer's temporaries, :func:`~leanspike.multistep.part_steps`)."""
        chunks: list[list[int]] = []
        for index, (t0, t1) in enumerate(schedule.intervals):
            with_graph = schedule.builds_graph(index)
            prev = chunks[-1] if chunks else None
            if (sequence and not with_graph and not schedule.update_per_interval and prev is not None
                    and prev[-1] not in (schedule.graph_intervals or ())
                    and schedule.graph_intervals is not None
                    and (max_steps is None or t1 - schedule.intervals[prev[0]][0] <= max_steps)):
                prev.append(index)
            else:
                chunks.append([index])
        return chunks

    def run(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: WindowLoss,
        schedule: Schedule,
        on_update: Callable[[], None],
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    ) -> StepResult:
        total = inputs.shape[0]
        modules = self.modules()
        reset_states(*modules)
        sequence = self.supports_sequence()
        n_blocks = len(self.blocks)
        out_sum: torch.Tensor | None = None
        # every window's loss per block, read once at the end: a read per interval would make
        # the host wait for the device at every step (on a GPU, no overlap of the two)
        block_losses: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
        n_backward = n_updates = 0
        with CompactSaved(), KernelCache() as kernel_cache, WeightGradSums() as grad_sums, \
                _temporal_routes(modules, schedule.temporal_routes):
            # a chunk holds every block's outputs over its steps but the last's (small): several
            # blocks bound its length
            max_steps = NO_GRAD_CHUNK if n_blocks > 1 else None
            chunks = self._chunks(schedule, sequence, max_steps)
            last_graph = max((i for i, c in enumerate(chunks) if schedule.builds_graph(c[0])), default=-1)
            for index, chunk in enumerate(chunks):
                start, stop = schedule.intervals[chunk[0]][0], schedule.intervals[chunk[-1]][1]
                detach_states(*modules)
                with_graph = schedule.builds_graph(chunk[0])
                ctx = contextlib.nullcontext() if with_graph else torch.no_grad()
                # one step, then its backward: the LIF layers' backward can read the carry they keep
                one_step = with_graph and stop - start == 1
                layered = sequence and pays_off(stop - start, inputs[0].numel())
                parts = self._parts(inputs[start:stop], layered, with_graph)
                spans = [(t0 - start, t1 - start) for t0, t1 in (schedule.intervals[i] for i in chunk)]
                # block by block: a block's graph is freed by its own backward before the next
                # block runs, so local blocks lower the peak (block-major order changes no value:
                # a block's state and RNG draws depend only on its own earlier steps)
                for b in range(n_blocks):
                    with ctx, backward_reads_carry(one_step):
                        outs, window = self._block(b, parts, layered)
                        windows = [window[t0:t1] for t0, t1 in spans] if len(chunk) > 1 else [window]
                        losses = [loss_fn(w, targets, total) for w in windows]
                    # a graph is built only for single-interval chunks; a block with nothing
                    # to train (frozen, or a loss that ignores it) has no graph to go back through
                    if with_graph and losses[0].requires_grad:
                        # the weights' last pass before they change or the batch ends: each
                        # layer's kernel transforms are freed after its backward
                        kernel_cache.last_pass = schedule.update_per_interval or index == last_graph
                        try:
                            backward(losses[0] * schedule.loss_scale)
                        finally:
                            kernel_cache.last_pass = False
                        n_backward += 1
                    block_losses[b].extend(value.detach() for value in losses)
                    if b == n_blocks - 1:
                        window_sum = window.detach().sum(0)
                        out_sum = window_sum if out_sum is None else out_sum + window_sum
                    else:
                        parts = self._detached(outs, layered)
                    del outs, window, windows, losses
                del parts
                if schedule.update_per_interval:
                    for _ in chunk:
                        grad_sums.flush()  # the weights' .grad complete before the optimizer reads it
                        on_update()
                        n_updates += 1
        if not schedule.update_per_interval:
            on_update()
            n_updates += 1
        assert out_sum is not None
        mean_output = out_sum / total
        detach_states(*modules)
        local_totals = [_float_sum(values) for values in block_losses]
        return StepResult(local_totals[-1], mean_output.argmax(1), mean_output, n_backward, n_updates,
                          local_totals if n_blocks > 1 else [])
