"""Data-parallel training: 2 processes (gloo, CPU) against one process on the whole batch.

Each rank trains on its half of a batch; after the gradient all-reduce the weights must
equal one process's step on the concatenated batch (the losses are batch means, so the
mean of the halves' gradients is the whole batch's gradient). The model has no batch
norm: per-rank BN would normalise each half with its own statistics, which is a
different computation from normalising the whole batch. Methods that call backward
several times per optimizer step (SLTT: T times; the local method: once per interval
and block) must all-reduce once per optimizer step, not once per backward.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from leanspike import distributed as D
from leanspike.methods import SLTT, TruncatedLocalBPTT
from leanspike.models.small import spiking_mlp

T, B, FEATURES, CLASSES = 3, 8, 12, 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return spiking_mlp(FEATURES, CLASSES, hidden=(16, 16)).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(T, 2 * B, FEATURES, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, CLASSES, (2 * B,), generator=g)
    return x, y


def _methods():
    return {"sltt": lambda: SLTT(), "ttl": lambda: TruncatedLocalBPTT(k=1, n=1, seed=3)}


def _train(method, model, x, y, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    results = [method.train_step(model, x, y, opt) for _ in range(steps)]
    return results


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no free-port race with other jobs on the machine
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    calls = {"all_reduce": 0}
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls["all_reduce"] += 1
        return real(tensor, *args, **kwargs)

    out = {}
    x, y = _batch()
    part = slice(rank * B, (rank + 1) * B)
    for name, make in _methods().items():
        model = _model()
        if rank:  # different start on rank 1: the broadcast must fix it
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        D.broadcast_tensors(D.module_tensors(model), src=0)
        method = make()
        hook = D.GradAllReduce(lambda: [*model.parameters(), *method.extra_parameters()], world)
        method.grad_sync = hook
        calls["all_reduce"] = 0
        D.dist.all_reduce = counting
        try:
            results = _train(method, model, x[:, part], y[part])
        finally:
            D.dist.all_reduce = real
        heads = [t for h in (getattr(method, "heads", None) or []) for t in h.state_dict().values()]
        torch.save({"weights": [t.clone() for t in model.state_dict().values()], "heads": heads}, f"{folder}/{name}{rank}.pt")
        out[name] = {"hook_calls": hook.calls, "all_reduce": calls["all_reduce"],
                     "optimizer_steps": sum(r.optimizer_steps for r in results),
                     "backward_passes": sum(r.backward_passes for r in results)}
    # the whole pipeline: trainer + DistributedSampler + sharded evaluation, on digits
    from leanspike.trainer import TrainConfig, train

    cfg = TrainConfig(dataset="digits", model="spiking_mlp", method="sltt", T=2, epochs=1, batch_size=16,
                      max_batches=2, extra={"model.options": {"hidden": [16]}, "tensorboard": False})
    summary = train(cfg, out=f"{folder}/run" if rank == 0 else None, progress=False)

    out["summary"] = {"world_size": summary["world_size"], "test_accuracy": summary["test_accuracy"]}
    with open(f"{folder}/result{rank}.json", "w") as f:
        json.dump(out, f)
    D.shutdown()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    x, y = _batch()
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    for name, make in _methods().items():
        model = _model()
        method = make()
        _train(method, model, x, y)
        expected = list(model.state_dict().values())
        expected_heads = [t for h in (getattr(method, "heads", None) or []) for t in h.state_dict().values()]
        for rank in range(2):
            got = torch.load(tmp_path / f"{name}{rank}.pt", weights_only=True)
            assert len(got["weights"]) == len(expected)
            for a, b in zip(got["weights"], expected):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            for a, b in zip(got["heads"], expected_heads):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            r = results[rank][name]
            # one all-reduce per optimizer step, however often backward ran
            assert r["hook_calls"] == r["optimizer_steps"] == r["all_reduce"]
    assert results[0]["sltt"]["optimizer_steps"] == 2  # once per batch
    assert results[0]["sltt"]["backward_passes"] == 2 * T  # but backward once per step
    assert results[0]["ttl"]["optimizer_steps"] == 2 * T  # once per interval
    # both ranks of the trainer run agree on the (all-reduced) evaluation
    assert results[0]["summary"] == results[1]["summary"]
    assert results[0]["summary"]["world_size"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and 0 <= summary["test_accuracy"] <= 1
