"""The design-space sweep: grid, shared cells, interruption and resume, tables, plots, fits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from leanspike.errors import UserError
from leanspike.experiments import config as C
from leanspike.experiments import design_space as ds


def tiny_base() -> C.ExperimentConfig:
    """Digits, a two-layer spiking MLP (depth 2), T = 2, one batch per run: under a second a run."""
    return C.from_dict({
        "data": {"name": "digits", "test_batch_size": 512},
        "model": {"name": "spiking_mlp", "options": {"hidden": [8, 8]}},
        "method": {"name": "ttl", "k": 2, "n": 2},
        "loss": {"name": "rate-mse"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "T": 2, "epochs": 1, "batch_size": 16, "max_batches": 1, "device": "cpu", "tensorboard": False,
    })


GRID = {"ks": [2, 1], "ns": [2, 1], "classifiers": ["trainable", "random"]}


# -- fits -----------------------------------------------------------------------------------

def test_fit_line_matches_numpy_polyfit():
    x = [20.0, 10.0, 5.0, 2.0, 1.0]
    y = [41.3, 21.9, 10.2, 5.1, 2.2]
    slope, intercept, r2 = ds.fit_line(x, y)
    ref_slope, ref_intercept = np.polyfit(x, y, 1)
    assert slope == pytest.approx(ref_slope, rel=1e-12)
    assert intercept == pytest.approx(ref_intercept, rel=1e-12)
    pred = np.polyval([ref_slope, ref_intercept], x)
    ref_r2 = 1 - np.sum((np.array(y) - pred) ** 2) / np.sum((np.array(y) - np.mean(y)) ** 2)
    assert r2 == pytest.approx(ref_r2, rel=1e-12)
    assert r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-12)  # simple regression: R² = r²


def test_fit_line_exact_and_degenerate():
    assert ds.fit_line([1, 2, 5], [7, 10, 19]) == pytest.approx((3.0, 4.0, 1.0))
    assert ds.fit_line([1, 2], [5, 5]) == pytest.approx((0.0, 5.0, 1.0))
    with pytest.raises(ValueError, match="two or more"):
        ds.fit_line([1], [2])
    with pytest.raises(ValueError, match="distinct x"):
        ds.fit_line([3, 3], [1, 2])


def test_memory_fits_per_classifier_and_n():
    rows = []
    for classifier, slope, base in (("trainable", 1000, 50), ("random", 900, 40)):
        for n, extra in ((2, 0), (1, -100)):
            for k, noise in ((4, 3), (2, -5), (1, 1)):
                rows.append({"classifier": classifier, "n": n, "k": k,
                             "peak_saved_bytes": slope * k + base + extra + noise})
    fits = ds.memory_fits(rows)
    assert [(f["classifier"], f["n"]) for f in fits] == [("trainable", 2), ("trainable", 1), ("random", 2), ("random", 1)]
    for f in fits:
        sel = [r for r in rows if r["classifier"] == f["classifier"] and r["n"] == f["n"]]
        x = [r["k"] for r in sel]
        y = [r["peak_saved_bytes"] for r in sel]
        s, i = np.polyfit(x, y, 1)
        assert f["slope_bytes_per_step"] == pytest.approx(s) and f["intercept_bytes"] == pytest.approx(i)
        assert f["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
        assert f["points"] == 3
    rel = ds.add_relative_memory(rows)
    row = next(r for r in rel if r["classifier"] == "trainable" and r["n"] == 1 and r["k"] == 4)
    assert row["saved_vs_largest_n"] == pytest.approx((4000 + 50 - 100 + 3) / (4000 + 50 + 3))


def test_design_grid_checks():
    assert ds.design_grid([1, 5, 2], [1, 4], ["random"]) == {
        "method.classifier": ["random"], "method.n": [4, 1], "method.k": [5, 2, 1]}
    with pytest.raises(UserError, match="repeats"):
        ds.design_grid([1, 1], [1], ["random"])
    with pytest.raises(UserError, match="classifier 'fixed'"):
        ds.design_grid([1], [1], ["fixed"])
    with pytest.raises(UserError, match="k 3 is out of range|--k 3"):
        ds.run_design_space(tiny_base(), "unused", ks=[3], ns=[1], classifiers=["random"])


# -- the sweep ------------------------------------------------------------------------------

def test_interrupted_sweep_resumes(tmp_path):
    from leanspike.trainer import train as real_train

    out = tmp_path / "sweep"
    calls: list[str] = []

    def counting(cfg, *, out, resume, progress):
        calls.append(out.name)
        return real_train(cfg, out=out, resume=resume, progress=progress)

    quiet = {"log": lambda m: None, "plots": False}  # plots are drawn by the last call only (matplotlib is slow)
    first = ds.run_design_space(tiny_base(), out, **GRID, train=counting, limit=3, **quiet)
    # depth 2: random n = 2 equals trainable n = 2, so 8 cells need 6 runs
    assert first.shared == {"classifier=random__n=2__k=2": "classifier=trainable__n=2__k=2",
                            "classifier=random__n=2__k=1": "classifier=trainable__n=2__k=1"}
    assert first.ran == calls == ["classifier=trainable__n=2__k=2", "classifier=trainable__n=2__k=1",
                                  "classifier=trainable__n=1__k=2"]
    assert len(first.pending) == 3 and not first.failed
    assert len(first.rows) == 5  # 3 runs + the 2 shared cells that reuse them
    first_summaries = {r: (out / "runs" / r / "summary.json").stat().st_mtime_ns for r in first.ran}

    # the next run is killed right after it started: its folder holds only its config
    victim = first.pending[0]

    def killed(cfg, *, out, resume, progress):
        out.mkdir(parents=True)
        (out / "config.yaml").write_text(C.to_yaml(cfg))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ds.run_design_space(tiny_base(), out, **GRID, train=killed, **quiet)
    assert not (out / "runs" / victim / "summary.json").exists()

    calls.clear()
    second = ds.run_design_space(tiny_base(), out, **GRID, train=counting, **quiet)
    assert sorted(second.skipped) == sorted(first.ran)  # finished runs are not trained again
    assert calls == second.ran and victim in second.ran and len(second.ran) == 3
    assert not second.pending and not second.failed
    assert {r: (out / "runs" / r / "summary.json").stat().st_mtime_ns for r in first.ran} == first_summaries

    assert not (out / "accuracy.png").exists()
    # a third call finds everything finished, and draws the plots
    third = ds.run_design_space(tiny_base(), out, **GRID, train=counting, log=lambda m: None)
    assert third.ran == [] and len(third.skipped) == 6

    # tables: one row per cell, in grid order, matching the run summaries
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["classifier"], r["n"], r["k"]) for r in rows] == [
        (c, str(n), str(k)) for c in ("trainable", "random") for n in (2, 1) for k in (2, 1)]
    for r in rows:
        source = r["shared_with"] or r["run_id"]
        summary = json.loads((out / "runs" / source / "summary.json").read_text())
        assert float(r["test_accuracy"]) == pytest.approx(summary["test_accuracy"], abs=1e-6)
        assert int(r["peak_saved_bytes"]) == summary["peak_saved_bytes"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 8 and len(saved["memory_fits"]) == 4
    for f in saved["memory_fits"]:
        sel = [r for r in saved["runs"] if r["classifier"] == f["classifier"] and r["n"] == f["n"]]
        s, i = np.polyfit([r["k"] for r in sel], [r["peak_saved_bytes"] for r in sel], 1)
        assert f["slope_bytes_per_step"] == pytest.approx(s) and f["intercept_bytes"] == pytest.approx(i)
        assert f["slope_bytes_per_step"] > 0  # a longer interval holds more for backward
    md = (out / "results.md").read_text()
    assert "## Test accuracy (%)" in md and "| random | 2 |" in md and "R²" in md
    for name in ("accuracy.png", "memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "sweep"
    ds.run_design_space(tiny_base(), out, ks=[1], ns=[1], classifiers=["random"], plots=False, log=lambda m: None)
    other = C.apply_overrides(tiny_base(), [("optimizer.lr", 0.2)])
    with pytest.raises(UserError, match="optimizer.lr differ from the folder's"):
        ds.run_design_space(other, out, ks=[1], ns=[1], classifiers=["random"], log=lambda m: None)
    with pytest.raises(UserError, match="grid differ from the folder's"):
        ds.run_design_space(tiny_base(), out, ks=[1], ns=[1], classifiers=["trainable"], log=lambda m: None)
    renamed = C.apply_overrides(tiny_base(), [("notes", "a preset's notes may change")])
    again = ds.run_design_space(renamed, out, ks=[1], ns=[1], classifiers=["random"], log=lambda m: None)
    assert again.skipped == ["classifier=random__n=1__k=1"] and again.ran == []
    with pytest.raises(UserError, match="n = 3 exceeds the spiking depth 2"):
        ds.run_design_space(tiny_base(), tmp_path / "deep", ks=[1], ns=[3], classifiers=["random"])


def test_cli_registered_and_checks_arguments(capsys):
    from leanspike.cli import main

    assert main(["design-space", "--dataset", "digits", "--ks", "0", "--ns", "1", "--out", "x"]) == 2
    assert "--ks" in capsys.readouterr().err
