"""The discrete leaky integrate-and-fire neuron.

One time step, with ``I[t]`` the input current and ``λ`` the decay::

    u[t] = λ·(u[t-1] − V_th·s[t-1]) + I[t]      soft reset (default, SLTT Eq. 2)
    u[t] = λ·u[t-1]·(1 − s[t-1]) + I[t]         hard reset (SLTT supplement Eq. S10)
    u[t] = λ·u[t-1] − V_th·s[t-1] + I[t]        soft reset outside the leak
                                                (truncated-local paper Eq. 1)
    s[t] = H(u[t] − V_th)

``λ = 1 − 1/τ`` when built from ``tau``; the truncated-local paper gives ``λ``
directly as its leak factor, so ``decay`` is accepted too.

The neuron keeps one tensor of state, the *carry* ``c[t] = u[t+1] − I[t+1]``, i.e.
everything the next step inherits. Detaching the carry removes every temporal route
(through ``u`` and through ``s``) at once, which is exactly SLTT's approximation.
"""

from __future__ import annotations

import torch

from .state import Stateful
from .surrogate import Surrogate, Triangle, make_surrogate

RESET_MODES = ("soft", "hard", "soft-unleaked")


class LIF(Stateful):
    """Stateful LIF layer that processes one time step per call."""

    def __init__(
        self,
        tau: float | None = None,
        *,
        decay: float | None = None,
        v_threshold: float = 1.0,
        reset: str = "soft",
        surrogate: Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        if tau is not None and decay is not None:
            raise ValueError("give either tau or decay, not both")
        if tau is None and decay is None:
            tau = 1.1
        if tau is not None:
            if tau < 1:
                raise ValueError(f"tau must be >= 1 (decay = 1 - 1/tau), got {tau}")
            decay = 1.0 - 1.0 / tau
        assert decay is not None
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if v_threshold <= 0:
            raise ValueError(f"v_threshold must be > 0, got {v_threshold}")
        if reset not in RESET_MODES:
            raise ValueError(f"reset must be one of {RESET_MODES}, got {reset!r}")
        if surrogate is None:
            surrogate = Triangle(width=v_threshold)
        elif isinstance(surrogate, str):
            surrogate = make_surrogate(surrogate, v_threshold=v_threshold)
        self.decay = float(decay)
        self.v_threshold = float(v_threshold)
        self.reset = reset
        self.surrogate = surrogate
        self.detach_reset = detach_reset
        self.carry: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"decay={self.decay:.4g}, v_threshold={self.v_threshold}, reset={self.reset}, "
                f"surrogate={self.surrogate}")

    def reset_state(self) -> None:
        self.carry = None

    def detach_state(self) -> None:
        if self.carry is not None:
            self.carry = self.carry.detach()

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        u = current if self.carry is None else self.carry + current
        spike = self.surrogate.spike(u - self.v_threshold)
        s = spike.detach() if self.detach_reset else spike
        if self.reset == "soft":
            self.carry = self.decay * (u - self.v_threshold * s)
        elif self.reset == "hard":
            self.carry = self.decay * u * (1 - s)
        else:
            self.carry = self.decay * u - self.v_threshold * s
        return spike
