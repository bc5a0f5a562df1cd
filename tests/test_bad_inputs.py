"""Every bad input gets one line naming the problem, exit status 2, no traceback, and
leaves nothing half-written (the results folder is not created, or left as it was).

Cases run in-process through ``leanspike.cli.main`` and fail before training starts.
The bad files are written here in the real formats (a CIFAR folder with corrupt
batches, checkpoints of other shapes or origins, YAML configs).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from leanspike.checkpoint import save_checkpoint
from leanspike.cli import main
from leanspike.models.small import spiking_cnn


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    f = {}
    cifar = root / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (cifar / name).write_bytes(pickle.dumps({"data": "not images"})[:20])  # truncated pickles
    f["cifar"] = cifar
    f["garbage"] = root / "garbage.pt"
    f["garbage"].write_bytes(b"\x00\x01 this is not a checkpoint")
    f["foreign"] = root / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, f["foreign"])
    f["code"] = root / "code.pt"
    torch.save({"format": "leanspike-checkpoint", "model": {}, "hook": pickle.Pickler}, f["code"])  # code reference
    f["cnn"] = root / "cnn.pt"
    save_checkpoint(f["cnn"], {"model": spiking_cnn(1, 10, 8).state_dict(), "epoch": 1})
    f["badtype"] = root / "badtype.yaml"
    f["badtype"].write_text("epochs: 3\nbatch_size: 32x\n")
    f["badyaml"] = root / "badyaml.yaml"
    f["badyaml"].write_text("optimizer:\n  lr: [0.1\n")
    f["full"] = root / "full"
    f["full"].mkdir()
    (f["full"] / "keep.txt").write_text("precious")
    f["file"] = root / "a_file"
    f["file"].write_text("not a folder")
    f["norun"] = root / "norun"
    f["norun"].mkdir()
    (f["norun"] / "notes.txt").write_text("mine")
    f["brokenrun"] = root / "brokenrun"
    f["brokenrun"].mkdir()
    (f["brokenrun"] / "config.yaml").write_text("data:\n  name: digits\nmodel:\n  name: spiking_mlp\n")
    (f["brokenrun"] / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    f["empty"] = root / "empty"
    f["empty"].mkdir()
    return f


# (argv with {placeholders} for the files above, words the one-line error must contain)
CASES = [
    (["train", "--preset", "sltt-cifar10-resnet99"], "unknown preset 'sltt-cifar10-resnet99'"),
    (["train", "--model", "resnet999"], "unknown model 'resnet999'"),
    (["train", "--set", "method.name=rtrl"], "unknown method 'rtrl'"),
    (["train", "--method", "rtrl"], "invalid choice: 'rtrl'"),
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--method", "tbptt", "--T", "4", "--k", "5"], "--k 5 is out of range"),
    (["train", "--method", "ttl", "--set", "method.k=0", "--set", "method.n=1"], "--k 0 is out of range"),
    (["train", "--method", "sltt-k", "--T", "4", "--K", "9"], "--K 9 is out of range"),
    (["train", "--method", "ttl", "--k", "2", "--n", "7", "--model", "spiking_mlp"], "n = 7 exceeds"),
    (["train", "--method", "ttl", "--k", "2"], "needs --n"),
    (["train", "--set", "T=0"], "--T must be >= 1, got 0"),
    (["train", "--T", "-3"], "expected an integer >= 1, got -3"),
    (["train", "--dataset", "cifar10", "--data-root", "{missing}"], "not found"),
    (["train", "--dataset", "cifar10"], "no data root given"),
    (["train", "--dataset", "cifar10", "--data-root", "{cifar}"], "corrupt"),
    (["train", "--set", "optimizer.lr=fast"], "config field optimizer.lr: expected a number, got 'fast' (str)"),
    (["train", "--config", "{badtype}"], "config field batch_size: expected an integer, got '32x' (str)"),
    (["train", "--config", "{badyaml}"], "is not valid YAML at line"),
    (["train", "--set", "optimizer.lrr=0.1"], "unknown config field optimizer.lrr"),
    (["train", "--set", "lr"], "expected FIELD=VALUE"),
    (["train", "--set", "data.options.colour=1"], "unknown options ['colour']"),
    (["train", "--surrogate", "zigzag"], "unknown surrogate 'zigzag'"),
    (["train", "--set", "optimizer.lr=-1"], "--lr must be > 0"),
    (["train", "--method", "sltt", "--loss", "mean-ce"], "needs a per-step loss"),
    (["train", "--model", "lenet1"], "needs inputs of at least 28×28, got 8×8"),
    (["train", "--init-from", "{garbage}"], "is corrupt or not a torch checkpoint"),
    (["train", "--init-from", "{code}"], "holds something other than tensors"),
    (["train", "--init-from", "{foreign}"], "is not a leanspike checkpoint"),
    (["train", "--model", "spiking_mlp", "--init-from", "{cnn}"], "does not fit model spiking_mlp: missing"),
    (["train", "--preset", "sltt-imagenet-nfresnet34-sltt"], "give --init-from"),
    (["train", "--out", "{full}"], "directory exists and is not empty"),
    (["train", "--out", "{file}"], "exists and is not a directory"),
    (["train", "--resume", "--out", "{norun}"], "not a leanspike run folder"),
    (["train", "--resume", "--out", "{brokenrun}"], "is corrupt or not a torch checkpoint"),
    (["sweep", "--dataset", "digits", "--grid", "optimizer.lrr=1,2", "--out", "{never}"],
     "unknown config field optimizer.lrr"),
    (["sweep", "--dataset", "digits", "--method", "tbptt", "--grid", "method.k=1,9", "--out", "{never}"],
     "--k 9 is out of range"),
    (["report", "{empty}"], "no finished runs"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_and_exit_2(argv, needle, files, tmp_path, capsys):
    places = {k: str(v) for k, v in files.items()} | {"missing": str(tmp_path / "nowhere"),
                                                      "never": str(tmp_path / "never")}
    argv = [a.format(**places) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", places["never"]]
    before = {k: _snapshot(files[k]) for k in ("full", "norun", "brokenrun", "empty", "cifar")}
    code = main(argv + (["--epochs", "1", "--max-batches", "1", "--no-progress"] if argv[0] == "train" else []))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert needle in err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()  # nothing half-written
    assert {k: _snapshot(files[k]) for k in before} == before
    assert files["file"].read_text() == "not a folder"


def test_there_are_at_least_twenty_distinct_bad_inputs():
    assert len({tuple(a) for a, _ in CASES}) >= 20
