"""The life cycle of a network's temporal state, driven by training methods.

Modules that carry something from one time step to the next (membrane potentials,
per-sequence dropout masks, presynaptic traces) subclass :class:`Stateful`. Methods
call :func:`reset_states` at the start of every batch and :func:`detach_states` to cut
temporal gradient routes; users never have to.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn


class Stateful(nn.Module):
    """A module with per-sequence state."""

    def reset_state(self) -> None:
        """Forget everything carried over from the previous sequence."""
        raise NotImplementedError

    def detach_state(self) -> None:
        """Keep the state's value but drop its autograd history."""
        raise NotImplementedError

    def keep_temporal_routes(self, keep: bool) -> None:
        """``keep=False``: until told otherwise, no gradient may flow through the state from one
        step to the next (as if it were detached before every step). A no-op for state that
        carries no gradient (dropout masks); the neuron overrides it."""


def stateful_modules(*modules: nn.Module | None) -> Iterable[Stateful]:
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, Stateful):
                yield m


def reset_states(*modules: nn.Module | None) -> None:
    """Reset every stateful sub-module (start of a new sequence / batch)."""
    for m in stateful_modules(*modules):
        m.reset_state()


def detach_states(*modules: nn.Module | None) -> None:
    """Detach every stateful sub-module's state (cut temporal routes)."""
    for m in stateful_modules(*modules):
        m.detach_state()


def keep_temporal_routes(*modules: nn.Module | None, keep: bool) -> None:
    """Tell every stateful sub-module whether gradients may flow through its state across steps."""
    for m in stateful_modules(*modules):
        m.keep_temporal_routes(keep)
