"""leanspike: memory- and time-efficient training of spiking neural networks."""

from .engine import StepResult
from .losses import MeanOutputCE, PerStepCE, RateMSE, SLTTLoss
from .blocks import spiking_depth
from .methods import BPTT, OTTT, SLTT, SLTTK, TBPTT, Method, TruncatedLocalBPTT
from .neuron import LIF, compile_lif, compiled_lif
from .surrogate import Rectangle, Sigmoid, Triangle

__version__ = "0.1.0"

__all__ = ["LIF", "Rectangle", "Triangle", "Sigmoid", "BPTT", "TBPTT", "SLTT", "SLTTK", "Method",
           "TruncatedLocalBPTT", "OTTT", "spiking_depth",
           "PerStepCE", "SLTTLoss", "MeanOutputCE", "RateMSE", "StepResult", "compile_lif", "compiled_lif",
           "__version__"]
