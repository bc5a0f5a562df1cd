"""leanspike: memory- and time-efficient training of spiking neural networks."""

from .engine import StepResult
from .losses import MeanOutputCE, PerStepCE, RateMSE, SLTTLoss
from .methods import BPTT, SLTT, SLTTK, TBPTT, Method
from .neuron import LIF
from .surrogate import Rectangle, Sigmoid, Triangle

__version__ = "0.1.0"

__all__ = ["LIF", "Rectangle", "Triangle", "Sigmoid", "BPTT", "TBPTT", "SLTT", "SLTTK", "Method",
           "PerStepCE", "SLTTLoss", "MeanOutputCE", "RateMSE", "StepResult", "__version__"]
