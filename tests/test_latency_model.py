"""The latency model (harness.engine.latency_model), its budget solver (harness.latency_budget)
and ``harness predict``: units and their keys, the corrections, predictions from a table, the
error summary, and one real probe cell on ort-cpu."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from harness.engine import latency_model as lm
from harness.latency_budget import solve_knob
from harness.models import build_model, removable_units
from methods.pruning.channels import prune_ratio
from methods.pruning.units import removed_copy

SHAPE = (3, 32, 32)


def _resnet20():
    torch.manual_seed(0)
    return build_model("resnet20").eval()


def test_units_are_the_blocks_and_same_shapes_share_a_key():
    dense = _resnet20()
    us = lm.units(dense, SHAPE)
    assert [u.name for u in us] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert [u.in_shape for u in us[:4]] == [(16, 32, 32)] * 4  # layer2.0 sees stage 1's output
    keys = [u.key for u in us]
    assert len(set(keys)) == 5  # stage-1 block, two transitions, two inner blocks
    assert keys[1] == keys[2] and keys[0] == keys[1] and keys[4] == keys[5]
    # layer pruning: removed units (Identity) are no units; the others keep their keys
    pruned = removed_copy(dense, removable_units(dense)[:3])
    assert [u.key for u in lm.units(pruned, SHAPE)] == keys[3:]
    # filter pruning: narrower blocks are other keys; weights never enter a key
    narrow = prune_ratio(copy.deepcopy(dense), {}, 0.5, SHAPE)
    assert not set(u.key for u in lm.units(narrow, SHAPE)) & set(keys)
    torch.manual_seed(1)
    assert [u.key for u in lm.units(build_model("resnet20").eval(), SHAPE)] == keys
    layers = lm.units(dense, SHAPE, "layer")
    assert len(layers) == 20 and layers[0].name == "conv1" and layers[-1].in_shape == (64,)


def test_a_finalised_shift_network_is_keyed_as_the_dense_computation_it_runs():
    """DeepShift's finalised layers compute exactly their Conv2d/Linear (powers of two are just
    weights): their blocks share the dense blocks' keys, so a sweep times them once; with
    activation fixed point on they compute more, and are keys of their own."""
    from methods.deepshift.convert import convert_to_shift, finalize

    dense = _resnet20()
    keys = [u.key for u in lm.units(dense, SHAPE)]
    for mode in ("q", "ps"):
        shift = copy.deepcopy(dense)
        convert_to_shift(shift, SHAPE, mode=mode, weight_bits=5)
        assert [u.key for u in lm.units(finalize(shift).eval(), SHAPE)] == keys
        assert lm.cost_repr(shift) == repr(dense) != repr(shift)
    fixed = copy.deepcopy(dense)
    convert_to_shift(fixed, SHAPE, mode="q", weight_bits=5, act_bits=(16, 16))
    assert not set(u.key for u in lm.units(finalize(fixed).eval(), SHAPE)) & set(keys)
    trainable = copy.deepcopy(dense)  # rounds its weights in every forward: not a Conv2d's cost
    convert_to_shift(trainable, SHAPE, mode="q", weight_bits=5)
    assert not set(u.key for u in lm.units(trainable.eval(), SHAPE)) & set(keys)


def test_probe_runs_the_unit_on_the_adapted_image():
    dense = _resnet20()
    unit = lm.units(dense, SHAPE)[3]  # layer2.0: 16x32x32 -> 32x16x16
    probe = lm.Probe(unit.in_shape, unit.module)
    assert probe(torch.randn(2, *SHAPE)).shape == (2, 32, 16, 16)
    assert lm.Probe((64,), dense.fc)(torch.randn(2, *SHAPE)).shape == (2, 10)
    probes = lm.probes_of(dense, SHAPE)
    assert len(probes) == 5 + 3  # five block keys and the adapters of three input shapes


def test_forms_fit_what_they_claim():
    pts = [(s, 0.1 + 1.4 * s) for s in (0.2, 0.5, 0.9, 1.3)]
    lin = lm.fit(pts, "linear")
    assert lin.form == "linear" and np.allclose(lin.coef, [0.1, 1.4])
    assert lm.fit(pts, "scale").form == "scale" and lm.fit(pts, "lookup").form == "lookup"
    assert math.isclose(lm.fit([(1.0, 1.2)], "lookup").predict(0.5), 0.7)
    one = lm.fit([(1.0, 1.2)], "linear")  # one network: linear falls back to scale, and says so
    assert one.form == "scale" and math.isclose(one.predict(0.5), 0.6) and "scale" in one.note
    assert lm.fit([], "linear") is None
    with pytest.raises(ValueError):
        lm.fit(pts, "cubic")


def _table(units: dict[str, float], nets: dict[str, tuple[list[str], list[str], float]]) -> lm.Table:
    t = lm.Table({"target": "t", "batch": 1}, calib_ms=[0.5])
    t.units = {k: {"frac": v / 0.5} for k, v in units.items()}
    t.nets = {k: {"frac": y / 0.5, "features": {"block": {"units": u, "adapters": a}}} for k, (u, a, y) in nets.items()}
    return t


def test_predict_from_a_table_holds_out_the_network_itself():
    units = {"A": 0.3, "B": 0.5, "ad": 0.1}
    table = _table(units, {"dense": (["A", "B"], ["ad", "ad"], 1.2), "small": (["A"], ["ad"], 0.4)})
    dense = lm.Features("dense", ["A", "B"], ["ad", "ad"])
    small = lm.Features("small", ["A"], ["ad"])
    p = lm.predict(table, small, dense, "scale")
    # held out: "small" itself is not fitted on; scale from dense = 1.2 / 0.6 = 2
    assert math.isclose(p.ms, 0.4) and math.isclose(p.frac_of_dense, 0.4 / 1.2) and p.form == "scale"
    assert lm.predict(table, dense, dense).note.startswith("measured")
    missing = lm.predict(table, lm.Features("x", ["C"], ["ad"]), dense)
    assert missing.ms is None and "not measured" in missing.note
    table.units.pop("ad")
    assert lm.predict(_table(units, {}), small, dense).ms is None  # no whole network yet: no correction


def test_prediction_error_per_target():
    rows = [{"target": "ort-cpu", "method": "x", "p50_ms": 1.0, "p50_predicted_ms": 1.05, "speedup": 2.0,
             "speedup_predicted": 1.6},
            {"target": "ort-cpu", "method": "x", "p50_ms": 2.0, "p50_predicted_ms": 1.6, "speedup": 1.0,
             "speedup_predicted": 1.0},
            {"target": "ort-cpu", "method": "none", "p50_ms": 2.0, "p50_predicted_ms": None},
            {"target": "ov-cpu", "method": "x", "status": "error", "p50_ms": 1.0, "p50_predicted_ms": 9.0}]
    err = lm.prediction_error(rows)
    assert err["ort-cpu"]["n"] == 2 and math.isclose(err["ort-cpu"]["mape"], (0.05 + 0.2) / 2)
    assert err["ort-cpu"]["within_10"] == 0.5 and math.isclose(err["ort-cpu"]["mape_speedup"], 0.1)
    assert "ov-cpu" not in err  # error rows are not predictions
    assert "p50 MAPE 12.5%" in lm.format_error(err)[0]


def test_solve_knob_finds_the_closest_value_on_a_staircase():
    def frac(x: float) -> float:  # decreasing with steps, as latency against a prune ratio
        return 1.0 - 0.8 * math.floor(x * 8) / 8
    calls = []

    def many(values):
        calls.append(len(values))
        return [frac(v) for v in values]
    sol = solve_knob(many, 0.5, 0.0, 0.95)
    assert abs(sol.predicted - 0.5) <= 0.05 and sol.evaluations and not sol.note
    assert sum(calls) == len(sol.evaluations) and len(calls) <= 3
    unreachable = solve_knob(many, 0.1, 0.0, 0.95)
    assert "not reachable" in unreachable.note
    cols = sol.columns("ort-cpu")
    assert cols["latency_budget"] == 0.5 and cols["latency_budget_target"] == "ort-cpu"


def test_probes_are_timed_cached_and_predicted_on_ort(tmp_path, cpu_targets):
    if "ort-cpu" not in cpu_targets:
        pytest.skip("ort-cpu is not available")
    dense = _resnet20()
    small = removed_copy(dense, removable_units(dense)[:4])
    fast = {"warmup_min_s": 0.0, "warmup_min_n": 2, "min_s": 0.0, "min_n": 10, "max_s": 5.0}
    tm = lm.TargetModel("ort-cpu", {}, 1, 1, "SingleStream", SHAPE, tmp_path / "work", folder=tmp_path / "cache",
                        rules=fast)
    table, errors = tm.ensure([dense, small], [dense])
    assert not errors and len(table.units) == 8 and table.level_ms > 0
    assert table.net_ms(lm.net_key(dense, SHAPE)) > 0
    again, _ = tm.ensure([dense, small], [dense])  # cached: nothing is timed again
    assert again.calib_ms == table.calib_ms
    p = tm.predict(small, dense, again)
    assert p.ms > 0 and 0 < p.frac_of_dense < 1, p
    fn = lm.fraction_predictor(dense, SHAPE, 1, {}, tmp_path / "work", folder=tmp_path / "cache", rules=fast)
    assert fn([small, dense], "ort-cpu")[1] == 1.0
