"""Splitting a model into local blocks at spiking-layer boundaries.

Local learning cuts an ``nn.Sequential`` model into blocks of ``n`` spiking units, a
spiking unit being a top-level child that is or contains a :class:`~leanspike.neuron.LIF`
(a residual block counts as one unit). The cut falls right after a spiking unit and
the parameter-free children that follow it (pooling, dropout, flatten, scaling), so a
block hands spikes, not currents, to the next one; the next weighted child (conv,
linear, batch norm: anything with parameters or buffers) opens the next unit. Children
before the first spiking unit belong to the first block, children after the last one to
the last block. The blocks share the model's modules; nothing is copied.

A spiking *output layer* — the model ending in ``Linear → LIF`` (the truncated-local
networks emit spikes) — is not a spiking layer of its own: it is the last block's
classifier, so it joins the last unit and does not count towards the depth. That makes
(k = T, n = depth) plain BPTT, and LeNet's depth 4, as in the paper (Table 2 lists the
layers without the classifier).
"""

from __future__ import annotations

from torch import nn

from .neuron import LIF


def is_spiking(module: nn.Module) -> bool:
    """True when ``module`` is or contains an LIF neuron."""
    return any(isinstance(m, LIF) for m in module.modules())


def _is_weighted(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _children(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"local blocks need an nn.Sequential model, got {type(model).__name__}")
    return list(model.children())


def spiking_depth(model: nn.Module) -> int:
    """The number of spiking units (the spiking output layer not counted)."""
    return len(unit_groups(model))


def _is_output_unit(group: list[nn.Module]) -> bool:
    """``[param-free…, Linear…, LIF, param-free…]``: a spiking output layer."""
    spiking = [i for i, m in enumerate(group) if is_spiking(m)]
    if len(spiking) != 1 or not isinstance(group[spiking[0]], LIF):
        return False
    weighted = [i for i, m in enumerate(group) if _is_weighted(m)]
    return bool(weighted) and all(isinstance(group[i], nn.Linear) and i < spiking[0] for i in weighted)


def unit_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The top-level children grouped into one list per spiking unit (see module doc)."""
    children = _children(model)
    depth = sum(is_spiking(c) for c in children)
    if depth == 0:
        raise ValueError(f"model has no spiking layer (no LIF among its {len(children)} children)")
    groups: list[list[nn.Module]] = [[] for _ in range(depth)]
    unit = -1  # index of the last spiking unit seen
    trailing = True  # still inside the parameter-free tail of unit ``unit``
    for child in children:
        if is_spiking(child):
            unit += 1
            groups[unit].append(child)
            trailing = True
        elif unit < 0:
            groups[0].append(child)
        elif unit == depth - 1:
            groups[unit].append(child)
        else:
            if _is_weighted(child):
                trailing = False
            groups[unit if trailing else unit + 1].append(child)
    if len(groups) > 1 and _is_output_unit(groups[-1]):
        groups[-2].extend(groups.pop())
    return groups


def split_blocks(model: nn.Module, n: int) -> list[nn.Sequential]:
    """Cut ``model`` into blocks of ``n`` spiking units; the last block may hold fewer."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (spiking layers per block) must be an integer >= 1, got {n!r}")
    groups = unit_groups(model)
    depth = len(groups)
    if n > depth:
        raise ValueError(f"n = {n} exceeds the model's spiking depth {depth}")
    blocks = []
    for start in range(0, depth, n):
        members = [m for group in groups[start:start + n] for m in group]
        blocks.append(nn.Sequential(*members))
    return blocks


def last_neuron(block: nn.Module) -> LIF:
    """The block's last LIF in module order (whose settings a local classifier copies)."""
    neurons = [m for m in block.modules() if isinstance(m, LIF)]
    if not neurons:
        raise ValueError("block holds no LIF neuron")
    return neurons[-1]
