"""Shared fixtures and the one place where skips are decided."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.timing import TimingRules
from harness.train import TrainRecipe

# Tiny settings for end-to-end runs: the engine is the real one, only the minimums are small.
FAST_TIMING = TimingRules(warmup_min_s=0.0, warmup_min_n=2, min_s=0.0, min_n=8, max_s=5.0)
FAST_RECIPE = TrainRecipe(epochs=4, batch_size=64)  # ~94% on digits in ~6 s


def selected_targets() -> list[str] | None:
    """Targets the tests may use: $HARNESS_TEST_TARGETS (set per tox environment) or all."""
    raw = os.environ.get("HARNESS_TEST_TARGETS")
    return [t.strip() for t in raw.split(",") if t.strip()] if raw else None


def available_cpu_targets() -> list[str]:
    from targets import TARGETS, get_target

    keys = selected_targets() or TARGETS.names()
    return [k for k in keys if k in TARGETS and get_target(k).device == "cpu"
            and get_target(k).availability().ok]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baselines trained by tests go to one per-session cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))


@pytest.fixture
def cpu_targets() -> list[str]:
    keys = available_cpu_targets()
    if not keys:
        pytest.skip("no CPU target available among HARNESS_TEST_TARGETS")
    return keys


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
