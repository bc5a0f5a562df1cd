"""The train command: results files, and one-line errors with exit status 2."""

import json

import pytest

from leanspike.cli import main


def test_train_writes_summary_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--method", "sltt-k", "--K", "2", "--T", "3", "--epochs", "2",
                 "--max-batches", "4", "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "T", "k", "K", "epochs", "seed", "test_accuracy", "peak_saved_bytes",
                "peak_rss_bytes", "s_per_iter"):
        assert key in summary
    assert summary["method"] == "sltt-k" and summary["K"] == 2 and summary["T"] == 3
    assert summary["peak_saved_bytes"] > 0 and 0 <= summary["test_accuracy"] <= 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "environment.json",
                                                     "metrics.csv", "metrics.jsonl", "summary.json"]


@pytest.mark.parametrize("argv,needle", [
    (["train", "--method", "nope"], "invalid choice"),
    (["train", "--method", "tbptt", "--T", "4"], "needs --k"),
    (["train", "--method", "tbptt", "--T", "4", "--k", "5"], "--k 5 is out of range"),
    (["train", "--method", "sltt-k", "--T", "4", "--K", "9"], "--K 9 is out of range"),
    (["train", "--T", "0"], "expected an integer >= 1"),
    (["train", "--lr", "abc"], "expected a number"),
    (["train", "--loss", "hinge"], "unknown loss"),
    (["train", "--model", "nonexistent_net", "--epochs", "1"], "nonexistent_net"),
    (["train", "--method", "sltt", "--loss", "mean-ce", "--epochs", "1", "--max-batches", "1"], "MeanOutputCE"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_one_line_exit_2(argv, needle, capsys, tmp_path):
    out = tmp_path / "never"
    code = main(argv + ["--out", str(out)] if argv[0] == "train" else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_existing_output_directory_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_progress_bar_and_tensorboard_scalars(tmp_path, capsys, monkeypatch):
    """tqdm shows loss, accuracy and speed; TensorBoard (an optional extra, faked here)
    receives every numeric metric once per epoch."""
    import sys
    import types

    events = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            events.append(("init", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            events.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            events.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = tmp_path / "run"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on terminals only
    assert main(["train", "--dataset", "digits", "--model", "spiking_mlp", "--T", "2", "--epochs", "2",
                 "--max-batches", "3", "--batch-size", "16", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "acc=" in err and "samples_s=" in err and "batch/s" in err
    assert "epoch 2/2: loss" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == ("init", str(out / "tensorboard"), 1) and events[-1] == ("close",)
    for row in rows:
        assert ("test_accuracy", row["test_accuracy"], row["epoch"]) in events
        assert ("train_loss", row["train_loss"], row["epoch"]) in events


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """A job's log (stderr redirected to a file) gets the epoch lines, not a redrawn bar."""
    assert main(["train", "--dataset", "digits", "--model", "spiking_mlp", "--T", "2", "--epochs", "1",
                 "--max-batches", "2", "--batch-size", "16", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1: loss" in err
    assert "batch/s" not in err and "\r" not in err
