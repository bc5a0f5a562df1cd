"""Every bad input gets one line naming the problem, exit status 2, no traceback, and
leaves nothing half-written (the results folder is not created, or left as it was).

Cases run in-process through ``leanspike.cli.main`` and fail before training starts.
The bad files are written here in the real formats (a CIFAR folder with corrupt
batches, checkpoints of other shapes or origins, YAML configs).
"""

from __future__ import annotations

import pickle
import zipfile
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
    f["binary"] = root / "binary.yaml"
    f["binary"].write_bytes(b"\xff\xfe\x00epochs: 3\n")
    model = spiking_cnn(1, 10, 8).state_dict()
    f["nontensor"] = root / "nontensor.pt"
    save_checkpoint(f["nontensor"], {"model": {k: 1 for k in model}, "epoch": 1})
    f["bitflip"] = root / "bitflip.pt"
    save_checkpoint(f["bitflip"], {"model": model, "epoch": 1})
    with zipfile.ZipFile(f["bitflip"]) as archive:  # one byte of a tensor's data changed on disk
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0)
    raw = bytearray(f["bitflip"].read_bytes())
    start = info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[start] ^= 0x40
    f["bitflip"].write_bytes(bytes(raw))
    f["noepoch"] = root / "noepoch"  # a real run whose checkpoint lost a field
    assert main(["train", "--out", str(f["noepoch"]), "--epochs", "1", "--max-batches", "1", "--no-progress"]) == 0
    (f["noepoch"] / "summary.json").unlink()
    ckpt = torch.load(f["noepoch"] / "checkpoint.pt", weights_only=True)
    save_checkpoint(f["noepoch"] / "checkpoint.pt",
                    {k: v for k, v in ckpt.items() if k not in ("epoch", "format", "version")})
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
    (["train", "--set", "optimizer.lr=-1"], "--lr must be a finite number > 0"),
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
    (["train", "--config", "{binary}"], "is not a UTF-8 text file"),
    (["train", "--model", "spiking_mlp", "--set", "model.options.hidden=[-1]"],
     "option hidden must be a non-empty list of positive integers, got [-1]"),
    (["train", "--set", "model.options.widths=abc"], "option widths must be a non-empty list of positive integers"),
    (["train", "--set", "optimizer.weight_decay=.nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["train", "--set", "schedule.eta_min=-1"], "schedule.eta_min must be a finite number >= 0, got -1"),
    (["train", "--init-from", "{bitflip}"], "checksum mismatch"),
    (["train", "--init-from", "{nontensor}"], "not a tensor of the right kind: 0.weight is int"),
    (["train", "--resume", "--out", "{noepoch}"], "no field 'epoch'"),
    (["train", "--set", "data.options.seed=abc"], "digits: option seed must be an integer >= 0, got 'abc'"),
    (["train", "--set", "data.options.test_fraction=-0.2"], "option test_fraction must be a number in (0, 1)"),
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
    before = {k: _snapshot(files[k]) for k in ("full", "norun", "brokenrun", "empty", "cifar", "noepoch")}
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


def test_a_reader_error_in_a_dataloader_worker_is_one_line():
    """A DataLoader worker re-raises the reader's error with the worker's traceback in its
    message; the command prints the reader's line only."""
    from torch._utils import ExceptionWrapper

    from leanspike.cli import _one_line
    from leanspike.errors import UserError

    try:
        raise UserError("events/a.aedat: truncated AEDAT 3.1 packet at byte 61")
    except UserError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(UserError) as info:
        wrapped.reraise()
    assert "\n" in str(info.value)
    assert _one_line(info.value) == "events/a.aedat: truncated AEDAT 3.1 packet at byte 61"
