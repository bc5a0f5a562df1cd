"""Sweeps skip finished runs and resume unfinished ones; reports aggregate over seeds."""

from __future__ import annotations

import json
import statistics

from leanspike.cli import main
from leanspike.experiments import config as C
from leanspike.experiments.sweep import expand, parse_grid

TINY = ["--dataset", "digits", "--model", "spiking_mlp", "--set", "model.options.hidden=[16]", "--T", "2",
        "--epochs", "1", "--max-batches", "2", "--batch-size", "16", "--no-progress"]


def test_grid_expansion_order_ids_and_validation():
    base = C.apply_overrides(C.ExperimentConfig(), {"method.name": "ttl", "method.n": 1, "T": 4})
    grid = parse_grid(["method.k=4,2", "method.classifier=trainable,random", "seed=0,1"])
    assert grid == {"method.k": [4, 2], "method.classifier": ["trainable", "random"], "seed": [0, 1]}
    points = expand(base, grid)
    assert len(points) == 8 and points[0].run_id == "k=4__classifier=trainable__seed=0"
    assert points[-1].run_id == "k=2__classifier=random__seed=1"
    assert points[3].config.method.classifier == "random" and points[3].config.seed == 1
    assert all(p.config.sweep == {} for p in points)
    skipped = []
    kept = expand(base, {"method.k": [2, 8]}, skip_invalid=True, warn=skipped.append)
    assert [p.config.method.k for p in kept] == [2] and "k=8" in skipped[0]


def test_sweep_skips_finished_resumes_unfinished_and_reports(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--grid", "method.name=sltt,bptt", "--seeds", "0,1", "--out", str(out)]
    assert main(argv) == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["name=bptt__seed=0", "name=bptt__seed=1", "name=sltt__seed=0", "name=sltt__seed=1"]
    capsys.readouterr()

    # one run lost its summary (killed after its last checkpoint), another never started
    (out / "name=sltt__seed=1" / "summary.json").unlink()
    untouched = (out / "name=bptt__seed=0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "name=bptt__seed=0: finished before, skipped" in log and "name=sltt__seed=1: resuming" in log
    assert "1 ran, 3 already finished, 0 failed" in log
    assert (out / "name=sltt__seed=1" / "summary.json").is_file()
    assert (out / "name=bptt__seed=0" / "checkpoint.pt").stat().st_mtime_ns == untouched

    # the same folder with another learning rate is another experiment: refused before anything runs
    listing = sorted(p.name for p in out.rglob("*"))
    assert main(argv + ["--lr", "0.3"]) == 2
    assert "was made with another optimizer.lr (0.1, now 0.3); use a new --out" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == listing

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for method in ("sltt", "bptt"):
        accs = [json.loads((out / f"name={method}__seed={s}" / "summary.json").read_text())["test_accuracy"]
                for s in (0, 1)]
        mean, std = statistics.fmean(accs) * 100, statistics.stdev(accs) * 100
        row = next(line for line in report.splitlines() if line.startswith(f"| {method} |"))
        assert f"| 2 | {mean:.2f} ± {std:.2f} |" in row
    for png in ("accuracy_vs_method_name.png", "memory_vs_method_name.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_plots_numeric_fields_against_x(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--method", "sltt-k", "--K", "1", "--grid", "method.K=1,2",
                 "--grid", "batch_size=8,16", "--out", str(out)]) == 0
    assert main(["report", str(out), "--x", "batch_size", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "accuracy_vs_batch_size.png").is_file()
    table = (tmp_path / "rep" / "report.md").read_text()
    assert "| method.K | batch_size | runs |" in table and table.count("\n| ") == 5  # header + 4 rows
    capsys.readouterr()
    assert main(["report", str(out), "--x", "T"]) == 2
    assert "not a swept field; swept: method.K, batch_size" in capsys.readouterr().err
