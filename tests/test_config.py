"""Sweep configuration and budget parsing are validated before anything runs."""
import pytest

from harness.engine.config import SweepConfig, load_toml, parse_budget_args
from harness.errors import UserError
from methods import Knob
from methods.base import Method


def test_budget_args_with_and_without_method():
    got = parse_budget_args(["deepshift:mode=q,ps", "deepshift:weight_bits=5,4"], ["deepshift"])
    assert got == {"deepshift": {"mode": ["q", "ps"], "weight_bits": ["5", "4"]}}
    assert parse_budget_args(["r=0.8,0.9"], ["none", "ftwt"]) == {"ftwt": {"r": ["0.8", "0.9"]}}
    with pytest.raises(UserError, match="METHOD: prefix"):
        parse_budget_args(["r=0.8"], ["a", "b"])
    with pytest.raises(UserError, match="not METHOD:KNOB"):
        parse_budget_args(["deepshift:mode"], None)


class TwoKnobs(Method):
    name = "two"
    knobs = (Knob("mode", str, ("q", "ps"), choices=("q", "ps")),
             Knob("weight_bits", int, (5, 4, 3), low=2, high=8))

    def apply(self, ctx, knobs):
        raise NotImplementedError


def test_knobs_combine_as_cartesian_product():
    m = TwoKnobs()
    assert len(m.budgets()) == 6
    combos = m.budgets({"mode": ["q", "ps"], "weight_bits": [5, 4]})
    assert combos == [{"mode": "q", "weight_bits": 5}, {"mode": "q", "weight_bits": 4},
                      {"mode": "ps", "weight_bits": 5}, {"mode": "ps", "weight_bits": 4}]


class QuickKnobs(Method):
    name = "quick-knobs"
    knobs = (Knob("mode", str, ("q", "ps"), choices=("q", "ps")),
             Knob("weight_bits", int, (5, 4, 3), low=2, high=8, quick_sweep=(4,)))

    def apply(self, ctx, knobs):
        raise NotImplementedError


def test_quick_preset_takes_the_smaller_default_sweep():
    m = QuickKnobs()
    assert len(m.budgets()) == 6 and len(m.budgets(preset="standard")) == 6
    assert m.budgets(preset="quick") == [{"mode": "q", "weight_bits": 4}, {"mode": "ps", "weight_bits": 4}]
    # what the user gives wins under every preset
    assert m.budgets({"weight_bits": [3]}, preset="quick") == [{"mode": "q", "weight_bits": 3},
                                                               {"mode": "ps", "weight_bits": 3}]
    assert "quick 4" in m.knob("weight_bits").describe()


def test_quick_preset_times_once_unless_told_otherwise():
    quick = {"tries": 1, "max_drift": 0.30, "max_ratio_se": 0.30}
    assert SweepConfig(preset="quick").noise_rules == quick
    assert SweepConfig(preset="standard").noise_rules == {}
    assert SweepConfig(preset="quick", noise={"tries": 3}).noise_rules == {**quick, "tries": 3}


class Forms(Method):
    name = "forms"
    knobs = (Knob("r", float, (0.8, 0.9), low=0, high=1), Knob("macs", float, (), low=0, high=1),
             Knob("mode", str, ("a",), choices=("a", "b")))
    exclusive = (("r", "macs"),)

    def apply(self, ctx, knobs):
        raise NotImplementedError


def test_alternative_knob_forms():
    m = Forms()
    assert m.budgets() == [{"r": 0.8, "mode": "a"}, {"r": 0.9, "mode": "a"}]  # macs: only when given
    assert m.budgets({"macs": [0.5]}) == [{"macs": 0.5, "mode": "a"}]  # r dropped: same group
    with pytest.raises(UserError, match="alternatives"):
        m.budgets({"macs": [0.5], "r": [0.8]})


def test_knob_parse_range_and_type():
    k = TwoKnobs().knob("weight_bits")
    assert k.parse("5") == 5
    with pytest.raises(UserError, match=r"out of range \[2, 8\]"):
        k.parse("9")
    with pytest.raises(UserError, match="not a int"):
        k.parse("five")
    with pytest.raises(UserError, match="no knob 'bits'"):
        TwoKnobs().knob("bits")


def test_config_validation():
    with pytest.raises(UserError, match="unknown preset 'quik'; did you mean: quick"):
        SweepConfig(preset="quik")
    with pytest.raises(UserError, match="unknown scenario"):
        SweepConfig(scenarios=["Server"])
    with pytest.raises(UserError):
        SweepConfig(threads=0)
    assert SweepConfig(preset="quick").timing_rules.min_s == 1.0


def test_toml_config(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('models = ["resnet20"]\npreset = "quick"\n[budgets.deepshift]\nweight_bits = [5, 4]\n'
                    '[timing]\nwarmup_min_s = 0.0\nwarmup_min_n = 1\nmin_s = 0.0\nmin_n = 5\nmax_s = 1.0\n')
    values = load_toml(path)
    cfg = SweepConfig(**values)
    assert cfg.budgets == {"deepshift": {"weight_bits": [5, 4]}}
    assert cfg.timing_rules.min_n == 5


@pytest.mark.parametrize("text,match", [("models = [", "malformed config"),
                                        ("modles = []", "did you mean: models")])
def test_malformed_toml(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_toml(path)
    with pytest.raises(UserError, match="not found"):
        load_toml(tmp_path / "missing.toml")
