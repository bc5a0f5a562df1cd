"""Analytic costs (truncated-local paper Sec. IV, SLTT supplement C.2) against hand counts.

Models are built here from leanspike layers; every expected number is worked out by hand
from the layer shapes or from the equations as printed in the paper (docs/costs.md).
"""

import math

import pytest
import torch
from torch import nn

from leanspike import LIF, TruncatedLocalBPTT
from leanspike.blocks import split_blocks
from leanspike.costs import (CostSetting, analyze, figure_of_merit, measure_densities, plan_blocks, profile_model,
                             scalar_multiplications, with_densities)


def tiny():
    """conv(1→4, 3×3, pad 1) → LIF → pool 2 → flatten → fc(64→8) → LIF, then the spiking output
    layer fc(8→3) → LIF (the last block's classifier, not a layer), on 1×8×8."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), LIF(tau=2.0), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, 8), LIF(tau=2.0), nn.Linear(8, 3), LIF(tau=2.0))


def lenet(widths, in_ch, size, classes):
    """The paper's spiking LeNet (Table 2): 5×5 convs, first padded by 2, 2×2 pools, FC, output layer."""
    c1, c2, c3, fc = widths
    return nn.Sequential(
        nn.Conv2d(in_ch, c1, 5, padding=2), LIF(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 5), LIF(), nn.AvgPool2d(2),
        nn.Conv2d(c2, c3, 5), LIF(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(c3, fc), LIF(),
        nn.Linear(fc, classes), LIF())


def test_profile_counts_match_hand_counts():
    p = profile_model(tiny(), (1, 8, 8), 3)
    assert p.depth == 2
    assert [u.params for u in p.all_units] == [4 * 9 + 4, 64 * 8 + 8, 8 * 3 + 3]
    assert [u.states for u in p.all_units] == [4 * 8 * 8, 8, 3]
    assert [u.macs for u in p.all_units] == [4 * 8 * 8 * 9, 64 * 8, 8 * 3]
    assert [u.out_features for u in p.all_units] == [64, 8, 3]
    # graph per step: unit 0 keeps u−V_th (256) and the pool's input (256); the input is excluded
    # unit 1: the fc input (64, the pooled spikes) + its LIF (8); output: fc input (8) + LIF (3)
    assert [u.graph for u in p.all_units] == [512, 72, 11]


def test_measured_densities_are_the_fraction_of_nonzero_inputs():
    model = tiny()
    x = (torch.rand(4, 6, 1, 8, 8) > 0.6).float()
    d = measure_densities(model, x)
    # direct computation: run the steps and count non-zeros entering each weighted layer
    from leanspike.state import reset_states
    reset_states(model)
    into_fc1, into_fc2 = 0.0, 0.0
    with torch.no_grad():
        for t in range(4):
            h = model[3](model[2](model[1](model[0](x[t]))))
            into_fc1 += float((h != 0).float().mean())
            s = model[5](model[4](h))
            into_fc2 += float((s != 0).float().mean())
            model[7](model[6](s))
    reset_states(model)
    assert d.layers["0"] == pytest.approx(float((x != 0).float().mean()))
    assert d.layers["4"] == pytest.approx(into_fc1 / 4)
    assert d.layers["6"] == pytest.approx(into_fc2 / 4)
    assert d.unit_outputs[0] == pytest.approx(into_fc1 / 4)


def test_equations_11_to_16_by_hand():
    """T = 2, k = 2, n = 1, batch 2, α = 0.5 everywhere: blocks [conv] + head, [fc] + output layer."""
    p = with_densities(profile_model(tiny(), (1, 8, 8), 3), spike_density=0.5, input_density=0.5)
    r = analyze(p, CostSetting(T=2, k=2, n=1, batch=2))
    B = 2
    W = [40, 520, 27]
    U = [B * 256, B * 8, B * 3]
    M = [B * 2304, B * 512, B * 24]
    heads = [(64, 3 * 64 + 3), (8, 3 * 8 + 3)]  # (features, params) of the local classifiers
    Uc = B * 3
    rows = {row.name: row for row in r.rows}
    # unit 0 (alone in its block, top): per step F: R = W+U, Wr = U; B-mid: R = W+2U, Wr = W+U; B-end: R = 0
    u0 = rows["0:Conv2d+LIF+AvgPool2d+Flatten"]
    assert u0.reads == 2 * (W[0] + U[0]) + (W[0] + 2 * U[0]) + 0
    assert u0.writes == 2 * U[0] + 2 * (W[0] + U[0])
    # additions: F = αM per step; B-mid = 2U + N_B·α·|W|; B-end = N_B·α·|W|
    assert u0.additions == 2 * 0.5 * M[0] + (2 * U[0] + B * 0.5 * W[0]) + B * 0.5 * W[0]
    assert u0.macs == 0  # the first layer of a block carries no error further down
    h0 = rows["head0"]
    f, wc = heads[0]
    assert h0.reads == 2 * (wc + Uc) + (2 * wc + 3 * Uc) + wc
    assert h0.writes == 2 * Uc + 2 * (wc + Uc)
    assert h0.additions == 2 * 0.5 * B * f * 3 + (2 * Uc + B * 0.5 * wc) + B * 0.5 * wc
    assert h0.macs == 2 * B * f * 3
    assert [row.name for row in r.rows] == ["0:Conv2d+LIF+AvgPool2d+Flatten", "head0", "1:Linear+LIF", "output"]
    top = rows["1:Linear+LIF"]  # top of the last block: its upper weights are the classifier's
    assert top.reads == 2 * (W[1] + U[1]) + (W[1] + 2 * U[1])
    out = rows["output"]  # the spiking output layer is the last block's classifier (Wc = 27, Uc = B·3)
    assert out.reads == 2 * (W[2] + U[2]) + (2 * W[2] + 3 * U[2]) + W[2]
    assert out.macs == 2 * M[2]
    # the whole network as one block (BPTT): unit 0 reads unit 1's weights in the backward pass
    bp = {row.name: row for row in analyze(p, CostSetting(T=2, k=2, n=2, batch=2)).rows}
    u0 = bp["0:Conv2d+LIF+AvgPool2d+Flatten"]
    assert u0.reads == 2 * (W[0] + U[0]) + (W[0] + 2 * U[0] + W[1]) + (W[1] + U[0])
    assert u0.macs == 0 and bp["1:Linear+LIF"].macs == 2 * M[1] and bp["output"].macs == 2 * M[2]


def test_random_classifiers_drop_weight_traffic_and_gradient_additions_only():
    p = with_densities(profile_model(tiny(), (1, 8, 8), 3), spike_density=0.2)
    t = analyze(p, CostSetting(T=4, k=2, n=1, classifier="trainable", batch=4))
    r = analyze(p, CostSetting(T=4, k=2, n=1, classifier="random", batch=4))
    ht, hr = [x for x in t.rows if x.name == "head0"][0], [x for x in r.rows if x.name == "head0"][0]
    assert hr.macs == ht.macs
    assert hr.memory_access < ht.memory_access
    assert hr.additions < ht.additions
    assert [x.memory_access for x in r.rows if not x.name.startswith("head")] == \
        [x.memory_access for x in t.rows if not x.name.startswith("head")]


def test_truncation_lowers_memory_access_and_leaves_macs():
    p = with_densities(profile_model(tiny(), (1, 8, 8), 3), spike_density=0.2)
    reports = [analyze(p, CostSetting(T=8, k=k, n=1, batch=4)) for k in (8, 4, 2, 1)]
    access = [x.totals["memory_access"] for x in reports]
    assert access == sorted(access, reverse=True) and access[-1] < access[0]
    assert len({x.totals["macs"] for x in reports}) == 1


@pytest.mark.parametrize("widths,in_ch,size,classes,expected", [
    ((6, 16, 120, 128), 1, 28, 47, 0.72),  # LeNet-1 on EMNIST: "LBP1 leads to a 72% reduction"
    ((64, 128, 128, 256), 2, 128, 11, 0.99),  # LeNet-2 on DvsGesture: "a 99% reduction"
])
def test_layerwise_local_training_cuts_macs_as_the_paper_states(widths, in_ch, size, classes, expected):
    p = with_densities(profile_model(lenet(widths, in_ch, size, classes), (in_ch, size, size), classes))
    bp = analyze(p, CostSetting(T=4, k=4, n=4, batch=8))
    lbp1 = analyze(p, CostSetting(T=4, k=4, n=1, batch=8))
    assert 1 - lbp1.totals["macs"] / bp.totals["macs"] == pytest.approx(expected, abs=0.01)
    # LeNet-1 by hand: BP propagates through conv2, conv3, fc and the output layer; LBP1 only
    # through the four classifiers (features 6·14·14, 16·5·5, 120, 128 → 47 classes)
    if classes == 47:
        by_hand_bp = 16 * 10 * 10 * 6 * 25 + 120 * 16 * 25 + 120 * 128 + 128 * 47
        by_hand_lbp1 = (6 * 14 * 14 + 16 * 5 * 5 + 120 + 128) * 47
        assert lbp1.totals["macs"] / bp.totals["macs"] == pytest.approx(by_hand_lbp1 / by_hand_bp)


def test_blocks_and_classifiers_are_those_the_local_method_builds():
    model = lenet((6, 16, 120, 128), 1, 28, 47)
    p = profile_model(model, (1, 28, 28), 47)
    blocks = plan_blocks(p, 2)
    assert [b.units for b in blocks] == [[0, 1], [2, 3]]
    assert blocks[0].classifier.features == 16 * 5 * 5 and not blocks[0].classifier.output
    assert blocks[1].classifier.output and blocks[1].classifier.params == 128 * 47 + 47
    x = torch.rand(2, 1, 1, 28, 28)
    for n in (1, 2, 3, 4):
        method = TruncatedLocalBPTT(k=2, n=n)
        method.engine(model, x)
        heads = method.heads or []
        planned = plan_blocks(p, n)
        assert len(planned) == len(split_blocks(model, n)) == len(heads) + 1
        assert [b.classifier.params for b in planned[:-1]] == \
            [sum(q.numel() for q in h.parameters()) for h in heads]
    with pytest.raises(ValueError, match="n must be"):
        plan_blocks(p, 5)


def test_memory_footprint_equations_9_and_10():
    p = profile_model(tiny(), (1, 8, 8), 3)
    s = CostSetting(T=6, k=3, n=1, batch=2)
    m = analyze(p, s).memory
    step = [2 * (512 + 3) * 4, 2 * (72 + 11) * 4]  # block 0 + its head's LIF; block 1 + the output layer
    weights = (p.params + (64 * 3 + 3)) * 4
    assert m["engine"] == 3 * max(step) + 2 * weights  # one block at a time: the largest over the interval
    assert m["paper"] == 2 * sum(step) + max(step) + 2 * weights  # Eq. 10: (k−1)·MC(CG) + MC_local(CG)
    bp = analyze(p, CostSetting(T=6, k=3, n=2, batch=2)).memory
    assert bp["paper"] == bp["engine"] == 3 * 2 * p.graph * 4 + 2 * p.params * 4  # Eq. 9


def test_figure_of_merit_is_one_for_bptt_and_counts_accuracy_loss():
    p = with_densities(profile_model(tiny(), (1, 8, 8), 3), spike_density=0.2)
    base = analyze(p, CostSetting(T=4, k=4, n=2, batch=4))
    assert figure_of_merit(base, base)["FoM"] == pytest.approx(1.0)
    local = analyze(p, CostSetting(T=4, k=1, n=1, batch=4))
    f = figure_of_merit(local, base, accuracy=0.9, baseline_accuracy=1.0)
    assert f["AL"] == pytest.approx(0.1)
    assert f["FoM"] == pytest.approx(0.1 + 0.25 * (f["MC"] + f["MA"] + f["ADD"] + f["MAC"]))


def test_sltt_scalar_multiplications_by_hand():
    """MLP 5 → 4 (LIF) → 3 (LIF): d = (4, 3); P_2 = 12 MACs into layer 1; G = (20, 12)."""
    model = nn.Sequential(nn.Linear(5, 4), LIF(), nn.Linear(4, 3), LIF())
    p = profile_model(model, (5,), 3)
    T, B, K = 5, 2, 2
    m = scalar_multiplications(p, T, batch=B, K=K)
    spatial = [12 + 4 + 20, 3 + 12]  # layer 1: e_s from above (12) + e_u (4) + ΔW (20); layer 2: e_u (3) + ΔW (12)
    bptt = sum(s + (T - 1) * (s + 2 * d) for s, d in zip(spatial, (4, 3)))
    assert m["total"]["bptt"] == B * bptt
    assert m["total"]["sltt"] == B * T * sum(spatial)
    assert m["total"]["sltt_k"] == B * K * sum(spatial)
    # the supplement: SLTT saves 2d per layer at every step but the last
    assert m["total"]["bptt"] - m["total"]["sltt"] == B * (T - 1) * 2 * (4 + 3)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="k = 5 exceeds T = 4"):
        CostSetting(T=4, k=5, n=1)
    with pytest.raises(ValueError, match="classifier"):
        CostSetting(T=4, k=1, n=1, classifier="fixed")
    with pytest.raises(ValueError, match="spike_density"):
        with_densities(profile_model(tiny(), (1, 8, 8), 3), spike_density=1.5)
    assert math.isfinite(analyze(profile_model(tiny(), (1, 8, 8), 3), CostSetting(T=3, k=2, n=2)).totals["reads"])


def test_dropout_masks_count_once_per_sequence():
    from leanspike.layers import SequenceDropout

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), LIF(), SequenceDropout(0.5), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(64, 3), LIF())
    p = profile_model(model, (1, 8, 8), 3)
    assert [u.sequence for u in p.all_units] == [4 * 8 * 8, 0]
    m2, m4 = (analyze(p, CostSetting(T=4, k=k, n=1, batch=3)).memory for k in (2, 4))
    assert m4["engine"] - m2["engine"] == 2 * m2["graph_step"]
    assert m2["graph_sequence"] == 3 * 256 * 4
