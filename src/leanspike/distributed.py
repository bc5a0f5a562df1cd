"""Data-parallel training over processes started by ``torchrun``.

Every process holds a full replica; rank 0's initial weights are broadcast to all, each
rank trains on its own shard of every epoch (a DistributedSampler), and gradients are
averaged across ranks right before each optimizer step. That last point is why this
is not plain DDP: SLTT, SLTT-K, TBPTT, OTTT and the local method call backward several
times per batch (once per step or interval), and DDP would all-reduce after every one
of them. :class:`GradAllReduce` is installed as the method's ``grad_sync`` hook, which
the engine calls once before every optimizer step, and sends all gradients in one
coalesced all-reduce per dtype.

Backend: NCCL when the run uses CUDA, gloo on CPU. Batch-norm running statistics are
not averaged during training (each rank normalises its own batches, as DDP does);
rank 0's buffers are broadcast before every evaluation so all ranks evaluate the same
network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(use_cuda: bool) -> DistContext | None:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR...);
    None for a single process."""
    if env_world_size() <= 1 and not dist.is_initialized():
        return None
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    else:
        backend = dist.get_backend()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)


def _flat_groups(tensors: Iterable[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[torch.Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` with rank ``src``'s values (one coalesced broadcast per dtype)."""
    for group in _flat_groups(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def module_tensors(*modules: nn.Module | None) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for m in modules:
        if m is not None:
            out += [*m.parameters(), *(b for b in m.buffers() if b.is_floating_point() or b.dtype == torch.long)]
    return out


class GradAllReduce:
    """``Method.grad_sync`` hook: average gradients over ranks, one all-reduce per dtype.

    Parameters without a gradient count as zeros; one that has no gradient on any rank
    keeps ``grad = None`` (so the optimizer skips it as it would in one process).
    ``calls`` counts invocations (tests check: one per optimizer step).
    """

    def __init__(self, parameters: Callable[[], list[nn.Parameter]], world_size: int) -> None:
        self.parameters = parameters
        self.world_size = world_size
        self.calls = 0

    @torch.no_grad()
    def __call__(self) -> None:
        self.calls += 1
        params = [p for p in self.parameters() if p.requires_grad]
        for (device, dtype), group in _flat_groups(params).items():
            parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            flags = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
            flat = torch.cat(parts + [flags])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            had = flat[-len(group):]
            for i, p in enumerate(group):
                chunk = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if had[i] > 0:
                    p.grad = chunk.div_(self.world_size).clone()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over ranks (epoch metrics)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def all_reduce_max(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group once every rank is done: a rank that tears its group down
    while another still talks to it aborts (gloo: "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
