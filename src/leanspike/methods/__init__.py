"""Training methods, each a schedule over the one engine."""

from .base import Method
from .bptt import BPTT, TBPTT
from .local import TruncatedLocalBPTT
from .ottt import OTTT
from .sltt import SLTT, SLTTK

__all__ = ["Method", "BPTT", "TBPTT", "SLTT", "SLTTK", "TruncatedLocalBPTT", "OTTT"]
