"""The dense baseline: trained once per (model, data, recipe, seed) and cached by content hash,
or loaded from a checkpoint the user names. Methods and targets all start from it."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.data import DataBundle
from harness.errors import UserError
from harness.export import file_sha256
from harness.models import build_model, load_checkpoint
from harness.train import TrainRecipe, fit, recipe_dict

CACHE_VERSION = 1  # bump when training code changes what a cached baseline means


def cache_dir() -> Path:
    """Where baselines are cached: $HARNESS_CACHE, else ~/.cache/compress-harness."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "compress-harness"))


@dataclass
class Baseline:
    """A trained dense model and where it came from."""

    model: nn.Module
    key: str
    source: str  # "trained", "cache", "checkpoint:PATH" or "untrained (synthetic data)"
    train_s: float


def baseline_key(model_name: str, data: DataBundle, recipe: TrainRecipe, seed: int,
                 checkpoint: Path | None) -> str:
    """Content hash of everything that determines the baseline's weights."""
    spec = {"v": CACHE_VERSION, "model": model_name, "data": data.content_hash,
            "classes": data.num_classes, "shape": list(data.input_shape), "recipe": recipe_dict(recipe),
            "seed": seed, "torch": torch.__version__,
            "checkpoint": file_sha256(checkpoint) if checkpoint else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def baseline_cached(folder: Path, model_name: str, key: str) -> bool:
    """Whether the trained baseline ``key`` is already in ``folder``."""
    return (Path(folder) / f"{model_name}-{key}.pt").exists()


def baseline_path(folder: Path, model_name: str, key: str) -> Path:
    return Path(folder) / f"{model_name}-{key}.pt"


def get_baseline(model_name: str, data: DataBundle, recipe: TrainRecipe, *, seed: int,
                 checkpoint: Path | None = None, progress: bool = True, folder: Path | None = None) -> Baseline:
    """The baseline for this (model, data, recipe, seed): from the user's checkpoint, from the
    cache (``folder``, default ``cache_dir()/baselines``), or trained now (resumable) and cached."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    key = baseline_key(model_name, data, recipe, seed, checkpoint)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=data.num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        return Baseline(model.eval(), key, f"checkpoint:{checkpoint}", 0.0)
    if data.synthetic:
        # Latency-only runs: random labels cannot train anything, so weights stay at the seeded init.
        return Baseline(model.eval(), key, "untrained (synthetic data)", 0.0)
    folder = Path(folder) if folder is not None else cache_dir() / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{model_name}-{key}.pt"
    if final.exists():
        try:
            state = torch.load(final, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            return Baseline(model.eval(), key, "cache", float(state["train_s"]))
        except Exception:
            final.unlink()  # a damaged cache entry is retrained, not trusted
    result = fit(model, data, recipe, seed=seed, checkpoint=folder / f"{model_name}-{key}.ckpt",
                 desc=f"baseline {model_name}", progress=progress)
    tmp = final.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "train_s": result.train_s}, tmp)
    tmp.replace(final)
    (folder / f"{model_name}-{key}.ckpt").unlink(missing_ok=True)
    return Baseline(model.eval(), key, "trained", result.train_s)
