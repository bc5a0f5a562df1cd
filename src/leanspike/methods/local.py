"""Temporally-truncated local BPTT (the (k, n) method of the truncated-local paper).

The network is cut into blocks of ``n`` spiking layers (:mod:`leanspike.blocks`). Every
block but the last ends in a local classifier, flatten → Linear → LIF (the LIF copies
the settings of the block's last neuron), whose firing rate over an interval is
regressed onto the one-hot label (:class:`~leanspike.losses.RateMSE`, Eq. 3); the last
block is scored on the network's own output. Block inputs are detached, so no error
crosses a block boundary. Time is cut into intervals of ``k`` steps (the last is
shorter when k ∤ T): state is detached at each interval start, and backward and the
weight update run after every interval (Algorithm 1). (k = T, n = depth) is BPTT.

Classifiers are built on the first batch from a shape probe, because their input width
depends on the block's output shape. ``classifier="random"`` keeps them fixed at their
seeded initial weights; ``"trainable"`` exposes them through :meth:`extra_parameters`,
and ``train_step`` adds them to the user's optimizer.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..blocks import last_neuron, split_blocks
from ..engine import Engine, Schedule, split_intervals
from ..losses import RateMSE, WindowLoss
from ..state import reset_states
from .base import Method, check_not_above_T, check_positive_int

CLASSIFIERS = ("trainable", "random")


def _probe_shapes(blocks: list[nn.Sequential], model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Per-sample output shape of every block, without side effects on the model.

    Eval mode keeps batch-norm statistics and dropout RNG untouched; state is reset before and after.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    reset_states(model)  # from rest, whatever batch the model saw last
    shapes = []
    try:
        with torch.no_grad():
            for block in blocks:
                x = block(x)
                shapes.append(x.shape[1:])
    finally:
        for m, mode in modes.items():
            m.training = mode
        reset_states(model)
    return shapes


def _model_placement(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    dtype = inputs.dtype if inputs.is_floating_point() else torch.get_default_dtype()
    return inputs.device, dtype


class TruncatedLocalBPTT(Method):
    """Local blocks of ``n`` spiking layers trained with BPTT truncated to ``k`` steps."""

    name = "ttl"

    def __init__(self, k: int, n: int, classifier: str = "trainable", loss: WindowLoss | None = None,
                 seed: int = 0) -> None:
        super().__init__(loss if loss is not None else RateMSE())
        self.k = check_positive_int("k", k)
        self.n = check_positive_int("n", n)
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.classifier = classifier
        self.seed = int(seed)
        self._heads: list[nn.Sequential] | None = None
        self._shapes: list[torch.Size] | None = None
        self._model_id: int | None = None

    @property
    def heads(self) -> list[nn.Sequential] | None:
        """The local classifiers, one per block but the last; None before the first batch."""
        return self._heads

    def schedule(self, total_steps: int) -> Schedule:
        check_not_above_T("k", self.k, total_steps)
        return Schedule(split_intervals(total_steps, self.k), update_per_interval=True)

    def engine(self, model: nn.Module, inputs: torch.Tensor) -> Engine:
        blocks = split_blocks(model, self.n)
        if len(blocks) == 1:
            return Engine(blocks, [None])
        device, dtype = _model_placement(model, inputs)
        if self._heads is None or self._model_id != id(model):
            # the whole first step: a norm without running statistics needs more than one sample
            shapes = _probe_shapes(blocks, model, inputs[0].to(device))
            if self._heads is None:
                self._heads = self._build_heads(blocks, shapes)
                self._shapes = shapes
            elif shapes != self._shapes:
                raise ValueError(f"this {self.name} method's classifiers were built for block outputs "
                                 f"{[tuple(s) for s in self._shapes or []]}, got {[tuple(s) for s in shapes]}; "
                                 "use one method instance per model")
            self._model_id = id(model)
        for head in self._heads:
            head.to(device=device, dtype=dtype)
        return Engine(blocks, [*self._heads, None])

    def _build_heads(self, blocks: list[nn.Sequential], shapes: list[torch.Size]) -> list[nn.Sequential]:
        classes = shapes[-1][-1]
        generator = torch.Generator().manual_seed(self.seed)
        heads = []
        for block, shape in zip(blocks[:-1], shapes[:-1]):
            features = math.prod(shape)
            linear = nn.Linear(features, classes)
            bound = 1.0 / math.sqrt(features)
            with torch.no_grad():
                linear.weight.copy_(torch.rand(classes, features, generator=generator, dtype=torch.float64) * 2 * bound - bound)
                linear.bias.copy_(torch.rand(classes, generator=generator, dtype=torch.float64) * 2 * bound - bound)
            neuron = copy.deepcopy(last_neuron(block))  # state was reset by the probe
            head = nn.Sequential(nn.Flatten(), linear, neuron)
            if self.classifier == "random":
                head.requires_grad_(False)
            heads.append(head)
        return heads

    def extra_parameters(self) -> list[nn.Parameter]:
        if self._heads is None or self.classifier == "random":
            return []
        return [p for head in self._heads for p in head.parameters() if p.requires_grad]

    def __repr__(self) -> str:
        return (f"TruncatedLocalBPTT(k={self.k}, n={self.n}, classifier={self.classifier!r}, "
                f"loss={self.loss!r}, seed={self.seed})")
