"""The memory planner: predictions from a few tiny calibration steps against measured peaks."""

import json

import pytest
import torch
from torch import nn

from leanspike import BPTT, LIF, SLTT, TBPTT, TruncatedLocalBPTT
from leanspike.errors import UserError
from leanspike.layers import SequenceDropout, StepBatchNorm2d
from leanspike.measure import SavedTensorMeter
from leanspike.planner import MemoryModel, Setting, calibrate, candidates, parse_bytes, parse_shape, plan


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), LIF(tau=2.0), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), LIF(tau=2.0), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 16), LIF(tau=2.0), nn.Linear(16, 5))


def measured(model, method, T, B):
    """Peak saved bytes of one batch, parameters (local classifiers' too) and input left out."""
    g = torch.Generator().manual_seed(T * 100 + B)
    x, y = torch.rand(T, B, 1, 12, 12, generator=g), torch.randint(0, 5, (B,), generator=g)
    method.engine(model, x)
    heads = getattr(method, "heads", None) or []
    with SavedTensorMeter(exclude=[model, *heads, x]) as meter:
        method.compute_gradients(model, x, y)
    return meter.peak_bytes


def test_predictions_match_measured_peaks_within_ten_percent():
    model = small_cnn()
    memory = calibrate(model, (1, 12, 12), 5, local_ns=(1,))  # BPTT and local n = 1 at T ∈ {1, 2, 3}, B ∈ {1, 2}
    assert {(p["k"], p["batch"]) for p in memory.points} == {(k, b) for k in (1, 2, 3) for b in (1, 2)}
    cases = [(Setting("bptt"), BPTT(), 6, 8),
             (Setting("tbptt", k=3), TBPTT(3), 7, 8),  # k ∤ T: the longest interval counts
             (Setting("local", k=2, n=1), TruncatedLocalBPTT(2, 1), 5, 6),
             (Setting("sltt"), SLTT(), 6, 16)]
    for setting, method, T, B in cases:
        got = measured(model, method, T, B)
        predicted = memory.saved_bytes(setting, T, B)
        assert abs(predicted - got) / got < 0.10, (setting.label(), predicted, got)
    # the local engine frees each block's graph before the next block runs: below BPTT's at the same k
    assert memory.saved_bytes(Setting("local", k=2, n=1), 5, 6) < memory.saved_bytes(Setting("tbptt", k=2), 5, 6)


def layer_by_layer_cnn():
    """Per-step batch norms: the layer-by-layer path, where a lone step keeps more per step than
    longer intervals (norm_lif, InputConvNormLIF) and a later interval keeps its carry in."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), StepBatchNorm2d(6), LIF(tau=2.0), SequenceDropout(0.2), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), StepBatchNorm2d(8), LIF(tau=2.0), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 16), LIF(tau=2.0), nn.Linear(16, 5))


def test_predictions_are_exact_where_intervals_of_one_step_and_carried_ones_differ():
    model = layer_by_layer_cnn()
    memory = calibrate(model, (1, 12, 12), 5, local_ns=(1,))
    assert memory.fit is not None and memory.fit.one_step is not None and memory.fit.carry is not None
    assert memory.fit.carry[0] > 0  # the fused pairs keep their carry in after the first interval
    cases = [(Setting("bptt"), BPTT(), 6, 8), (Setting("tbptt", k=3), TBPTT(3), 7, 8),
             (Setting("tbptt", k=2), TBPTT(2), 6, 4), (Setting("sltt"), SLTT(), 5, 8),
             (Setting("local", k=2, n=1), TruncatedLocalBPTT(2, 1), 6, 4)]
    for setting, method, T, B in cases:
        got = measured(model, method, T, B)
        predicted = memory.saved_bytes(setting, T, B)
        assert abs(predicted - got) / got < 0.01, (setting.label(), predicted, got)


def test_calibration_takes_the_paths_of_the_batch_it_predicts_for():
    """A one-step interval on a small input runs step by step (``multistep.ONE_STEP_MIN_VALUES``,
    here 1000 values): calibrated at batches 1 and 2 (144 and 288 values per step), the planner
    must measure on the path a batch of 8 (1152 values: layer by layer) or 4 (576: step by step)
    will take, or its one-step predictions (SLTT's) are those of the other path."""
    from leanspike import multistep

    multistep.ONE_STEP_MIN_VALUES = 1000  # the conftest fixture restores it
    model = layer_by_layer_cnn()
    for B in (8, 4):
        memory = calibrate(model, (1, 12, 12), 5, paths_of_batch=B)
        got = measured(model, SLTT(), 5, B)
        assert abs(memory.saved_bytes(Setting("sltt"), 5, B) - got) / got < 0.01, B
    natural = calibrate(model, (1, 12, 12), 5)  # batches 1 and 2: step by step
    got = measured(model, SLTT(), 5, 8)
    assert abs(natural.saved_bytes(Setting("sltt"), 5, 8) - got) / got > 0.05
    assert multistep.ONE_STEP_MIN_VALUES == 1000


def test_plan_orders_by_expected_accuracy_cost_and_marks_what_fits():
    model = small_cnn()
    rows, memory = plan(model, (1, 12, 12), 5, T=8, batch=32, budget=2**40)
    labels = [r.setting.label() for r in rows]
    assert labels[:4] == ["bptt", "tbptt(k=4)", "tbptt(k=2)", "sltt"]
    assert labels[4:7] == ["sltt-k(K=4)", "sltt-k(K=2)", "sltt-k(K=1)"]
    assert labels[7] == "local(k=8, n=1)" and labels[-1] == "local(k=1, n=1)"
    assert all(r.fits for r in rows)
    # a budget between SLTT's and TBPTT(2)'s totals: the first fitting row is SLTT
    sltt, tb2 = rows[3].total, rows[2].total
    rows, _ = plan(model, (1, 12, 12), 5, T=8, batch=32, budget=(sltt + tb2) / 2, memory=memory)
    assert next(r for r in rows if r.fits).setting.label() == "sltt"
    assert rows[0].total > rows[1].total > rows[2].total > rows[3].total
    rows, _ = plan(model, (1, 12, 12), 5, T=8, batch=32, budget=1000, memory=memory)
    assert not any(r.fits for r in rows)


def test_fixed_memory_counts_weights_gradients_optimizer_and_input():
    model = small_cnn()
    params = sum(p.numel() for p in model.parameters())
    rows, _ = plan(model, (1, 12, 12), 5, T=4, batch=3, budget=2**40, optimizer="adam",
                   settings=[Setting("bptt")], memory=MemoryModel(0.0, 0.0))
    assert rows[0].fixed == params * 4 * (2 + 2) + 4 * 3 * 144 * 4


def test_candidates_for_T_one():
    assert [s.label() for s in candidates(1, 1)] == ["bptt", "sltt"]


def test_parsers():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("1e6") == 10**6
    assert parse_shape("2x48x48") == (2, 48, 48)
    assert parse_shape("1×28×28") == (1, 28, 28)
    with pytest.raises(UserError, match="--budget"):
        parse_bytes("lots")
    with pytest.raises(UserError, match="--input"):
        parse_shape("2x0x3")


def test_plan_and_costs_commands(tmp_path, capsys):
    pytest.importorskip("leanspike.models.registry")
    from leanspike import cli

    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--model", "spiking_mlp", "--input", "1x8x8", "--T", "4", "--batch", "16",
                     "--budget", "1MiB", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rows"][0]["setting"] == "bptt"
    fitting = [r["setting"] for r in doc["rows"] if r["fits"]]
    assert doc["recommended"] == (fitting[0] if fitting else None)
    assert "recommended" in capsys.readouterr().out or not fitting
    assert cli.main(["plan", "--model", "spiking_mlp", "--input", "1x8x8", "--T", "4", "--batch", "16",
                     "--budget", "much"]) == 2
    assert cli.main(["costs", "--model", "spiking_mlp", "--input", "1x8x8", "--T", "4", "--k", "4", "2", "1",
                     "--n", "1", "--density", "0.2", "--classifier", "trainable", "random", "--calibrate",
                     "--out", str(tmp_path / "c")]) == 0
    doc = json.loads((tmp_path / "c" / "costs.json").read_text())
    assert len(doc["settings"]) == 6 and (tmp_path / "c" / "costs.png").stat().st_size > 0
    assert doc["graph_scale"] > 0
    assert cli.main(["costs", "--model", "spiking_mlp", "--T", "4", "--k", "5"]) == 2
