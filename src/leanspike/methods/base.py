"""What every training method offers: a training step and a gradient computation.

A method owns a loss and turns (model, T) into an engine :class:`~leanspike.engine.Schedule`.
It resets the network's state at the start of every batch, so users never do.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..engine import Engine, Schedule, StepResult, check_inputs
from ..losses import PerStepCE, WindowLoss


class Method:
    """Base class; subclasses implement :meth:`schedule`."""

    name = "method"

    def __init__(self, loss: WindowLoss | None = None) -> None:
        self.loss = loss if loss is not None else PerStepCE()
        #: called before every optimizer step, e.g. to all-reduce gradients across processes
        self.grad_sync: Callable[[], None] | None = None

    # -- what subclasses define ---------------------------------------------------------
    def schedule(self, total_steps: int) -> Schedule:  # pragma: no cover - abstract
        raise NotImplementedError

    def engine(self, model: nn.Module, inputs: torch.Tensor) -> Engine:
        """The blocks the schedule runs over; one block (the whole model) by default."""
        return Engine([model], [None])

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the method owns beside the model's (local classifiers)."""
        return []

    # -- the public API -----------------------------------------------------------------
    def _check_loss(self, schedule: Schedule, total_steps: int) -> None:
        if self.loss.decomposes == "none" and schedule.intervals != [(0, total_steps)]:
            raise ValueError(f"loss {self.loss!r} needs all T steps in one backward; "
                             f"only BPTT can use it, not {self.name}")

    def validate(self, total_steps: int) -> None:
        """Raise ValueError if this method cannot run T = ``total_steps`` with its loss."""
        self._check_loss(self.schedule(total_steps), total_steps)

    def _prepare(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
        total = check_inputs(inputs, targets)
        schedule = self.schedule(total)
        self._check_loss(schedule, total)
        return self.engine(model, inputs), schedule

    def train_step(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: "torch.amp.GradScaler | None" = None,
    ) -> StepResult:
        """Train on one batch of ``inputs`` ``[T, B, ...]``; steps ``optimizer`` as scheduled."""
        model.train()
        engine, schedule = self._prepare(model, inputs, targets)
        self._attach_to_optimizer(optimizer)
        optimizer.zero_grad(set_to_none=True)

        def update() -> None:
            if self.grad_sync is not None:
                self.grad_sync()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        backward = (lambda loss: scaler.scale(loss).backward()) if scaler is not None else torch.Tensor.backward
        return engine.run(inputs, targets, self.loss, schedule, update, backward)

    def compute_gradients(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch's gradients without any optimizer step.

        For methods that update after every interval, this is the sum of the interval
        gradients at the current weights (what a per-batch update would apply).
        Parameters that receive no gradient map to zeros.
        """
        engine, schedule = self._prepare(model, inputs, targets)
        params = dict(model.named_parameters())
        for i, p in enumerate(self.extra_parameters()):
            params[f"_method.{i}"] = p
        for p in params.values():
            p.grad = None
        engine.run(inputs, targets, self.loss, schedule, lambda: None)
        grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in params.items()}
        for p in params.values():
            p.grad = None
        return grads

    def _attach_to_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Add the method's own trainable parameters to ``optimizer`` once."""
        extra = [p for p in self.extra_parameters() if p.requires_grad]
        if not extra:
            return
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in extra if id(p) not in known]
        if missing:
            optimizer.add_param_group({"params": missing})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(loss={self.loss!r})"


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_not_above_T(name: str, value: int, total_steps: int) -> None:
    if value > total_steps:
        raise ValueError(f"{name} = {value} exceeds the number of time steps T = {total_steps}")
