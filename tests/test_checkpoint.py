"""Faults lose nothing: atomic checkpoints, exact resume after SIGKILL/SIGTERM, NaN stops.

The resume tests run a real ``leanspike train`` in a child process, kill it at a random
moment, resume it here, and compare with the same run done without interruption: the
weights (and the local method's classifiers) must be bit-identical and the per-epoch
metrics equal (time measurements aside). The child sleeps a little before every batch
(the numbers do not change) so that the random kill lands inside training.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leanspike import checkpoint as ckpt
from leanspike.cli import main
from leanspike.errors import UserError
from leanspike.trainer import TIMING_KEYS

CHILD = """
import os, sys, time
import leanspike.methods.base as base
from leanspike.cli import main
original = base.Method.train_step
def slow(self, *args, **kwargs):
    time.sleep({delay})
    return original(self, *args, **kwargs)
base.Method.train_step = slow
while not os.path.exists({go!r}):  # imports done; train when the test says so
    time.sleep(0.01)
sys.exit(main(sys.argv[1:]))
"""

# rate encoding draws from torch's global RNG, SLTT-K from its own generator, the loader
# shuffles with its generator: all three must come back from the checkpoint
SLTTK_RUN = ["train", "--dataset", "digits", "--model", "spiking_mlp", "--set", "model.options.hidden=[24]",
             "--method", "sltt-k", "--K", "1", "--T", "3", "--epochs", "4", "--max-batches", "5",
             "--batch-size", "16", "--set", "data.options.encoding=rate", "--no-progress"]
# the local method: classifiers (trainable) are state too; one optimizer step per interval
LOCAL_RUN = ["train", "--dataset", "digits", "--model", "spiking_mlp", "--set", "model.options.hidden=[24,16]",
             "--method", "ttl", "--k", "2", "--n", "1", "--T", "3", "--epochs", "3", "--max-batches", "5",
             "--batch-size", "16", "--no-progress"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _final(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = _final(a), _final(b)
    assert ca["epoch"] == cb["epoch"] and cb["batch"] == 0
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for ha, hb in zip(ca["heads"] or [], cb["heads"] or []):
        for key in ha:
            assert torch.equal(ha[key], hb[key]), key
    assert _strip(ca["metrics"]) == _strip(cb["metrics"])
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert sa["test_accuracy"] == sb["test_accuracy"]
    lines = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert _strip(lines) == _strip(ca["metrics"])  # one row per epoch, none torn or repeated


def _start_child(tmp_path: Path, argv: list[str], out: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(delay=0.04, go=str(tmp_path / "go")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), *argv, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "child exited"
        assert time.monotonic() < deadline, "child did not start training"
        time.sleep(0.01)


def _interrupted_then_resumed(tmp_path: Path, argv: list[str], sig: int, window: float) -> tuple[Path, Path]:
    """The uninterrupted run (here, while the child imports) and the interrupted, resumed one."""
    out = tmp_path / "interrupted"
    proc = _start_child(tmp_path, argv, out)
    base = tmp_path / "uninterrupted"
    assert main(argv + ["--out", str(base)]) == 0
    (tmp_path / "go").touch()
    _wait_for(out / "config.yaml", proc)  # written once the run is built, right before training
    delay = random.uniform(0.0, window)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (out / "summary.json").exists(), f"the run finished before the signal (delay {delay:.2f} s)"
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in err and "--resume" in err
        saved = _final(out)
        assert saved["batch"] > 0 or saved["epoch"] > 0  # stopped after a batch, checkpoint written
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    return base, out


def test_sigkill_at_a_random_point_then_resume_gives_the_same_run(tmp_path, capsys):
    # 4 epochs x 5 batches x >= 40 ms: kill within the first 0.7 s of training
    base, resumed = _interrupted_then_resumed(tmp_path, SLTTK_RUN, signal.SIGKILL, 0.7)
    _assert_same_run(base, resumed)
    assert not list(resumed.glob(".*.tmp"))  # no temp file left visible as a checkpoint


def test_sigterm_as_soon_as_the_run_folder_appears_still_checkpoints(tmp_path):
    """The signal handlers are in place before config.yaml is written: a SIGTERM sent the moment
    it appears stops after the first batch with a checkpoint and the resume hint, not silently."""
    out = tmp_path / "run"
    proc = _start_child(tmp_path, SLTTK_RUN, out)
    (tmp_path / "go").touch()
    _wait_for(out / "config.yaml", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "interrupted by SIGTERM" in err and "--resume" in err, err
    assert _final(out)["batch"] > 0


def test_sigterm_mid_epoch_checkpoints_and_resume_gives_the_same_run(tmp_path, capsys):
    base, resumed = _interrupted_then_resumed(tmp_path, LOCAL_RUN, signal.SIGTERM, 0.5)
    _assert_same_run(base, resumed)


def test_same_seed_same_result_and_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--model", "spiking_mlp", "--T", "2", "--epochs", "2",
            "--max-batches", "3", "--batch-size", "16", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(argv + ["--out", str(a)]) == 0
    assert main(argv + ["--out", str(b)]) == 0
    _assert_same_run(a, b)
    before = (a / "checkpoint.pt").read_bytes()
    assert main(argv + ["--out", str(a), "--resume"]) == 0  # finished: reports, trains nothing
    assert (a / "checkpoint.pt").read_bytes() == before
    c = tmp_path / "c"
    assert main(argv + ["--seed", "1", "--out", str(c)]) == 0
    assert not torch.equal(_final(a)["model"]["1.weight"], _final(c)["model"]["1.weight"])


def test_checkpoint_is_plain_data_and_rng_states_are_tensors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "spiking_mlp", "--method", "sltt-k", "--K", "1",
                 "--T", "2", "--epochs", "1", "--max-batches", "2", "--no-progress", "--out", str(out)]) == 0
    data = torch.load(out / "checkpoint.pt", weights_only=True)  # no code is unpickled
    assert data["format"] == ckpt.FORMAT and data["epoch"] == 1
    assert isinstance(data["rng"]["torch"], torch.Tensor) and data["rng"]["torch"].dtype == torch.uint8
    assert isinstance(data["loader"], torch.Tensor) and isinstance(data["method_rng"], torch.Tensor)
    assert data["config"]["method"]["K"] == 1


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})

    def crash(f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write_bytes(path, crash)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("content,needle", [
    (b"not a zip file at all", "corrupt"),
    (None, "not a leanspike checkpoint"),
])
def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, content, needle):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        ckpt.load_checkpoint(path)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import leanspike.methods.base as base

    original = base.Method.train_step
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2 (3 batches per epoch)
            result.loss = float("nan")
        return result

    monkeypatch.setattr(base.Method, "train_step", poisoned)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--model", "spiking_mlp", "--T", "2", "--epochs", "3",
                 "--max-batches", "3", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "loss became nan at epoch 2, step 2" in err and "last good checkpoint" in err
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["batch"] == 0
    assert not (out / "summary.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_removes_the_temp_file_a_killed_writer_left(tmp_path, capsys):
    """SIGKILL during a checkpoint write leaves ``.checkpoint.pt.<random>.tmp`` (it cannot be
    caught); resuming deletes it and keeps the real checkpoint."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "spiking_mlp", "--T", "2", "--epochs", "1",
            "--max-batches", "2", "--batch-size", "16", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    (out / "summary.json").unlink()  # as if killed after the last checkpoint, before the summary
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    before = (out / "checkpoint.pt").read_bytes()
    assert main(argv + ["--resume"]) == 0
    assert not stale.exists() and not list(out.glob(".*.tmp"))
    assert (out / "checkpoint.pt").read_bytes() == before and (out / "summary.json").is_file()
