"""How much of the BPTT gradient survives when temporal routes are dropped (SLTT Fig. 3).

:func:`gradient_similarity` computes, on one batch and at the same weights, the BPTT
gradient and the spatial-only gradient (SLTT: the state entering each step detached,
every step's loss back-propagated on its own) and returns their cosine similarity per
layer (every module owning parameters; its parameters concatenated) and averaged over
layers. Both methods see the same per-step loss, so the only difference between the two
gradients is the temporal routes; the loss values of both runs are compared as a check.
Randomness (dropout masks) is replayed and buffers (batch-norm statistics) restored, so
the analysis leaves the model as it found it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .losses import PerStepCE, WindowLoss
from .methods import BPTT, SLTT, Method


@dataclass
class Similarity:
    layers: dict[str, float]  # module name -> cosine similarity
    mean: float  # averaged over layers
    loss_bptt: float
    loss_sltt: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "layers": self.layers, "loss_bptt": self.loss_bptt, "loss_sltt": self.loss_sltt}


def _layers(model: nn.Module) -> dict[str, list[str]]:
    """Module name -> names of the parameters it owns directly (modules with parameters)."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, q in module.named_parameters(recurse=False) if q.requires_grad]
        if own:
            out[name or type(module).__name__] = own
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened tensors (float64); 1.0 when both are zero."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


@contextlib.contextmanager
def _replayed(model: nn.Module):
    """Run a block twice with the same RNG draws and buffers: yields a function that
    resets both to the state at entry; restores buffers at exit."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def rewind() -> None:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        current = dict(model.named_buffers())
        with torch.no_grad():
            for n, b in buffers.items():
                current[n].copy_(b)

    try:
        yield rewind
    finally:
        rewind()


def loss_value(method: Method, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The loss ``method`` would back-propagate on this batch (forward only, no graph)."""
    engine = method.engine(model, inputs)
    with torch.no_grad():
        result = engine.run(inputs, targets, method.loss, method.schedule(inputs.shape[0]), lambda: None,
                            backward=lambda loss: None)
    return result.loss


def gradient_similarity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                        loss: WindowLoss | None = None, check_loss: bool = True) -> Similarity:
    """Per-layer cosine similarity between the BPTT and the spatial-only (SLTT) gradient."""
    loss = loss if loss is not None else PerStepCE()
    if loss.decomposes != "step":
        raise ValueError(f"gradient similarity needs a per-step loss shared by BPTT and SLTT, got {loss!r}")
    bptt, sltt = BPTT(loss), SLTT(loss)
    with _replayed(model) as rewind:
        g_bptt = bptt.compute_gradients(model, inputs, targets)
        rewind()
        g_sltt = sltt.compute_gradients(model, inputs, targets)
        rewind()
        l_bptt = loss_value(bptt, model, inputs, targets)
        rewind()
        l_sltt = loss_value(sltt, model, inputs, targets)
    if check_loss and abs(l_bptt - l_sltt) > 1e-4 * max(1.0, abs(l_bptt)):
        raise RuntimeError(f"BPTT and SLTT saw different losses ({l_bptt} vs {l_sltt}) on the same batch")
    layers = {name: cosine(torch.cat([g_bptt[p].reshape(-1) for p in params]),
                           torch.cat([g_sltt[p].reshape(-1) for p in params]))
              for name, params in _layers(model).items()}
    mean = sum(layers.values()) / len(layers) if layers else float("nan")
    return Similarity(layers, mean, l_bptt, l_sltt)
