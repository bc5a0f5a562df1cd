"""Bad input to the commands besides ``train`` (report, sweep, design-space, costs,
grad-sim, plan, demo): one line naming the flag or file and the value, exit status 2,
no traceback, and nothing half-written. An unwritable output path fails before any
training or measuring starts.

Cases run in-process through ``leanspike.cli.main``; none of them trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanspike.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def afile(tmp_path) -> Path:
    """A plain file: ``afile/x`` cannot be created."""
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


def _no_training(monkeypatch) -> None:
    """Any run that gets as far as training fails the test."""
    import leanspike.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the bad input was caught")

    monkeypatch.setattr(leanspike.trainer, "train", refuse)
    monkeypatch.setattr("leanspike.commands.demo.train", refuse)


# ------------------------------------------------------------------------------ report


def _sweep_folder(root: Path) -> Path:
    """Two finished runs (config.yaml + summary.json) that differ in T, and a sweep.json."""
    for T in (1, 2):
        run = root / f"T={T}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"T: {T}\nseed: 0\n")
        (run / "summary.json").write_text(json.dumps({"test_accuracy": 0.5 + T / 10}))
    (root / "sweep.json").write_text(json.dumps({"grid": {"T": [1, 2]}}))
    return root


REPORT_CASES = {
    "summary_list": ("T=2/summary.json", b"[1, 2]", "holds a JSON list; expected a JSON object"),
    "summary_str": ("T=2/summary.json", b'"done"', "holds a JSON str; expected a JSON object"),
    "summary_binary": ("T=2/summary.json", b"\xff\xfe\x00junk", "is not a UTF-8 text file"),
    "summary_torn": ("T=2/summary.json", b'{"test_accuracy": 0.', "is not valid JSON"),
    "config_binary": ("T=2/config.yaml", b"\xff\xfe\x00junk", "is not a UTF-8 text file"),
    "config_list": ("T=2/config.yaml", b"- 1\n- 2\n", "holds a YAML list; expected the run's YAML mapping"),
    "sweep_int": ("sweep.json", b'{"grid": {"T": 4}}', "grid field T holds 4 (int); expected a list"),
    "sweep_gridlist": ("sweep.json", b'{"grid": [1, 2]}', "grid is a JSON list; expected a JSON object"),
    "sweep_list": ("sweep.json", b"[1, 2]", "holds a JSON list; expected a JSON object"),
    "sweep_binary": ("sweep.json", b"\xff\xfe\x00junk", "is not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_malformed_file_is_one_line(case, tmp_path, capsys):
    root = _sweep_folder(tmp_path / "sweep")
    name, content, needle = REPORT_CASES[case]
    (root / name).write_bytes(content)
    assert main(["report", str(root)]) == 2
    err = _one_line(capsys)
    assert str(root / name) in err and needle in err
    assert not (root / "report.md").exists()


def test_report_of_a_good_folder_still_works(tmp_path, capsys):
    root = _sweep_folder(tmp_path / "sweep")
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    assert "| 2 | 1 |" in (tmp_path / "rep" / "report.md").read_text()


def test_report_unwritable_out_is_one_line(tmp_path, afile, capsys):
    root = _sweep_folder(tmp_path / "sweep")
    assert main(["report", str(root), "--out", str(afile)]) == 2
    err = _one_line(capsys)
    assert f"--out {afile}: cannot write there" in err
    assert afile.read_text() == "not a folder"


# ------------------------------------------------------------------------------ sweep


def test_sweep_grid_without_field_names_grid(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["sweep", "--dataset", "digits", "--grid", "=1,2", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "--grid '=1,2'" in err and "--set" not in err
    assert not out.exists()


def test_sweep_cuda_without_cuda_fails_before_writing(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    assert main(["sweep", "--dataset", "digits", "--grid", "T=1,2", "--device", "cuda", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "--device cuda: CUDA is not available" in err
    assert not out.exists()  # no sweep.json, no run folders


def test_sweep_unwritable_out_fails_before_training(afile, capsys, monkeypatch):
    _no_training(monkeypatch)
    out = afile / "x"
    assert main(["sweep", "--dataset", "digits", "--grid", "T=1,2", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert f"--out {out}: cannot write there" in err


def test_design_space_unwritable_out_fails_before_training(afile, capsys, monkeypatch):
    _no_training(monkeypatch)
    out = afile / "x"
    assert main(["design-space", "--dataset", "digits", "--T", "2", "--ks", "1,2", "--ns", "1",
                 "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert f"--out {out}: cannot write there" in err


def test_design_space_bad_grid_leaves_no_out_folder(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    out = tmp_path / "new" / "ds"
    assert main(["design-space", "--dataset", "digits", "--T", "2", "--ks", "9", "--ns", "1",
                 "--out", str(out)]) == 2
    assert "--k 9 is out of range" in _one_line(capsys)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------ costs

COSTS = ["costs", "--model", "spiking_cnn", "--input", "1x8x8", "--T", "4", "--batch", "2", "--density", "0.2"]


@pytest.mark.parametrize("extra,needle", [
    (["--input-density", "7"], "--input-density 7.0: expected a fraction in [0, 1]"),
    (["--K", "0"], "--K 0: expected 1 <= K <= T = 4"),
    (["--K", "5"], "--K 5: expected 1 <= K <= T = 4"),
    (["--num-classes", "0"], "--num-classes must be >= 1, got 0"),
    (["--accuracy", "4,1=1.5"], "--accuracy 4,1=1.5: accuracy 1.5 out of range; expected a fraction in [0, 1]"),
])
def test_costs_bad_argument_is_one_line(extra, needle, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(COSTS + extra + ["--out", str(out)]) == 2
    assert needle in _one_line(capsys)
    assert not out.exists()


def test_costs_unwritable_out_fails_before_measuring(afile, capsys, monkeypatch):
    from leanspike.commands import costs

    monkeypatch.setattr(costs, "measure_densities", lambda *a, **k: pytest.fail("measured before --out was checked"))
    assert main(COSTS[:-2] + ["--dataset", "digits", "--out", str(afile)]) == 2
    assert f"--out {afile}: cannot write there" in _one_line(capsys)
    assert afile.read_text() == "not a folder"


def test_costs_valid_k_and_out_still_work(tmp_path, capsys):
    out = tmp_path / "costs"
    assert main(COSTS + ["--K", "1", "--accuracy", "4,2=0.9", "--out", str(out)]) == 0
    doc = json.loads((out / "costs.json").read_text())
    assert doc["scalar_multiplications"]["K"] == 1
    assert (out / "costs.png").is_file()
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------ grad-sim

GRAD_SIM = ["grad-sim", "--dataset", "digits", "--T", "2", "--iterations", "2"]


@pytest.mark.parametrize("extra,needle", [
    (["--widths", "0"], "--widths 0: expected channel counts >= 1, got 0"),
    (["--widths=-4"], "--widths -4: expected channel counts >= 1, got -4"),
    (["--widths", "4", "0"], "--widths 4 0: expected channel counts >= 1, got 0"),
    (["--threads=-1"], "--threads must be >= 1, got -1"),
    (["--tau", "nan"], "--tau nan: expected τ >= 1"),
    (["--batch", "5000"], "--batch 5000: the digits training set holds"),
])
def test_grad_sim_bad_argument_is_one_line(extra, needle, tmp_path, capsys, monkeypatch):
    from leanspike.commands import grad_sim

    monkeypatch.setattr(grad_sim, "train_and_analyse", lambda *a, **k: pytest.fail("trained on bad input"))
    out = tmp_path / "never"
    assert main(GRAD_SIM + extra + ["--out", str(out)]) == 2
    err = _one_line(capsys)
    assert needle in err
    if extra[0] == "--batch":
        assert "expected --batch <= " in err
    assert not out.exists()


def test_grad_sim_unwritable_out_fails_before_training(afile, capsys, monkeypatch):
    from leanspike.commands import grad_sim

    monkeypatch.setattr(grad_sim, "train_and_analyse", lambda *a, **k: pytest.fail("trained before --out check"))
    assert main(GRAD_SIM + ["--out", str(afile)]) == 2
    assert f"--out {afile}: cannot write there" in _one_line(capsys)
    assert afile.read_text() == "not a folder"


def test_grad_sim_batches_never_loop_forever_on_an_empty_loader():
    from leanspike.commands.grad_sim import _batches
    from leanspike.errors import UserError

    ds = torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(UserError, match="--batch 5"):
        next(_batches(ds, 5, 0))


# ------------------------------------------------------------------------------ plan, demo


def test_plan_unwritable_json_fails_before_calibrating(afile, capsys, monkeypatch):
    from leanspike.commands import plan

    monkeypatch.setattr(plan, "plan", lambda *a, **k: pytest.fail("calibrated before --json was checked"))
    path = afile / "p.json"
    assert main(["plan", "--model", "spiking_cnn", "--input", "1x8x8", "--T", "2", "--batch", "2",
                 "--budget", "1GiB", "--json", str(path)]) == 2
    assert f"--json {path}: cannot write there" in _one_line(capsys)


def test_demo_epochs_zero_is_an_error_not_the_default(capsys, monkeypatch):
    _no_training(monkeypatch)
    assert main(["demo", "--T", "1", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1, got 0" in _one_line(capsys)


def test_demo_unwritable_json_fails_before_training(afile, capsys, monkeypatch):
    _no_training(monkeypatch)
    path = afile / "d.json"
    assert main(["demo", "--T", "1", "--epochs", "1", "--json", str(path)]) == 2
    assert f"--json {path}: cannot write there" in _one_line(capsys)
