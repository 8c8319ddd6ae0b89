"""The strict registry, the did-you-mean, entry points, and the light-import rule."""
import subprocess
import sys

import pytest

from harness.errors import UserError
from harness.registry import Registry


def test_duplicate_names_raise():
    reg = Registry("thing")
    reg.register("a", object())
    with pytest.raises(ValueError, match="duplicate thing name 'a'"):
        reg.register("a", object())


def test_unknown_name_suggests():
    reg = Registry("target")
    reg.register("trt", object())
    reg.register("ort-cpu", object())
    with pytest.raises(UserError, match=r"unknown target 'tensorrt'; did you mean: trt") as exc:
        reg.get("tensorrt")
    assert "\n" not in str(exc.value)


def test_lazy_string_entry_is_imported_on_use():
    reg = Registry("thing")
    reg.register("od", "collections:OrderedDict")
    assert "od" in reg.names()
    assert type(reg.get("od")).__name__ == "OrderedDict"


def test_entry_points_are_loaded(monkeypatch):
    class EP:
        name, value = "plugin", "collections:Counter"

    monkeypatch.setattr("harness.registry.entry_points", lambda group: [EP()] if group == "g" else [])
    reg = Registry("thing", entry_point_group="g")
    assert "plugin" in reg.names()
    assert type(reg.get("plugin")).__name__ == "Counter"


def test_importing_the_packages_imports_no_runtime():
    code = ("import sys, harness, targets, methods, harness.engine.cli\n"
            "from targets import TARGETS, get_target\n"
            "[get_target(k).availability() for k in TARGETS.names()]\n"
            "from methods import METHODS, get_method\n"
            "[get_method(k) for k in METHODS.names()]\n"
            "bad = [m for m in ('onnxruntime', 'openvino', 'tvm', 'tensorrt') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
