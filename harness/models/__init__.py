"""The model registry: names -> ``ModelSpec``; building models and loading checkpoints.

CIFAR-shape models (32x32 input) follow the FTWT code so that the MAC/parameter counts reproduce
its constants; ImageNet-shape models (224x224) are torchvision's with random weights (nothing is
ever downloaded). Builders are imported lazily, so listing models does not import torchvision.
Other packages add models through the ``harness.models`` entry-point group (value: a
``"module:attr"`` string naming a ``ModelSpec``).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import UserError
from harness.models.units import Unit
from harness.registry import Registry, import_string

__all__ = ["ModelSpec", "MODELS", "FAMILIES", "Unit", "build_model", "model_spec", "load_checkpoint",
           "removable_units", "pruning_ignored_layers"]

FAMILIES = ("resnet_cifar", "vgg_cifar", "mobilenet_v2_cifar",
            "resnet_imagenet", "mobilenet_v2_imagenet", "vgg_imagenet")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``builder(num_classes)`` returns a freshly initialised ``nn.Module``."""

    name: str
    family: str
    input_size: int
    builder: Callable[[int], nn.Module]
    summary: str


@dataclass(frozen=True)
class _LazyBuilder:
    """A builder given as ``"module:function"``, imported on first call (keeps imports light)."""

    target: str

    def __call__(self, num_classes: int) -> nn.Module:
        return import_string(self.target)(num_classes)


MODELS: Registry[ModelSpec] = Registry("model", entry_point_group="harness.models")


def _register(name: str, family: str, input_size: int, target: str, summary: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}")
    MODELS.register(name, ModelSpec(name, family, input_size, _LazyBuilder(target), summary))


_CIFAR = "harness.models.cifar_"
_register("resnet20", "resnet_cifar", 32, _CIFAR + "resnet:resnet20",
          "CIFAR ResNet-20, option-A (avg-pool + zero-pad) shortcut, 0.27 M params")
_register("resnet56", "resnet_cifar", 32, _CIFAR + "resnet:resnet56",
          "CIFAR ResNet-56 as in FTWT/LayerPrune, option-A shortcut, 125.5 M MACs, 0.85 M params")
_register("resnet110", "resnet_cifar", 32, _CIFAR + "resnet:resnet110",
          "CIFAR ResNet-110 as in FTWT, option-A shortcut, 1.7 M params")
_register("vgg16_bn", "vgg_cifar", 32, _CIFAR + "vgg:vgg16_bn",
          "CIFAR VGG16-bn as in FTWT (single linear classifier), 313.5 M MACs, 14.7 M params")
_register("mobilenet_v2", "mobilenet_v2_cifar", 32, _CIFAR + "mobilenet:mobilenet_v2",
          "CIFAR MobileNetV2, kuangliu variant behind FTWT's constants, 91.2 M MACs, 2.3 M params")
_register("resnet18", "resnet_imagenet", 224, "harness.models.imagenet:resnet18",
          "torchvision ResNet-18, random init, 1.81 G MACs, 11.7 M params")
_register("resnet50", "resnet_imagenet", 224, "harness.models.imagenet:resnet50",
          "torchvision ResNet-50, random init, 4.1 G MACs, 25.6 M params")
_register("mobilenet_v2_imagenet", "mobilenet_v2_imagenet", 224,
          "harness.models.imagenet:mobilenet_v2",
          "torchvision MobileNetV2, random init, 0.30 G MACs, 3.5 M params")
_register("vgg16_bn_imagenet", "vgg_imagenet", 224, "harness.models.imagenet:vgg16_bn",
          "torchvision VGG16-bn, random init, 15.5 G MACs, 138 M params")


def model_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` registered as ``name``; unknown names raise ``UserError`` (did-you-mean)."""
    return MODELS.get(name)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A new model ``name`` with ``num_classes`` outputs. Seeding is the caller's business."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return model_spec(name).builder(num_classes)


# ---------------------------------------------------------------------------------------------
# Per-family pruning declarations: removable units (layer pruning) and the layers whose output
# channels filter pruning keeps (Torch-Pruning's ``ignored_layers``), side by side in each
# family's module. Each returns None for a model that is not of its family.

# Each family's module declares its own; torchvision's module is asked last (it imports
# torchvision). Add a family here when it gains a declaration.
_DECLARATIONS = ("harness.models.cifar_resnet", "harness.models.cifar_vgg",
                 "harness.models.cifar_mobilenet", "harness.models.imagenet")


def _declared(model: nn.Module, what: str) -> Any:
    import importlib

    for name in _DECLARATIONS:
        found = getattr(importlib.import_module(name), what)(model)
        if found is not None:
            return found
    return None


def removable_units(model: nn.Module) -> list[Unit]:
    """The units of ``model`` that layer pruning may replace by identity, in forward order, as
    declared by its family (see ``harness.models.units``); UserError for an undeclared model."""
    units = _declared(model, "removable_units")
    if units is None:
        raise UserError(f"model class {type(model).__name__} declares no removable units "
                        f"(add removable_units() to its family module)")
    return units


def pruning_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose output channels filter pruning must keep, as declared by the model's
    family (``pruning_ignored`` in its module); for a model no family declares: every Linear
    (the classifier)."""
    ignored = _declared(model, "pruning_ignored")
    return ignored if ignored is not None else [m for m in model.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------------
# Checkpoints

_REASON_CHARS = 200


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the weights in ``path`` into ``model`` in place (strict); returns nothing.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` or ``"model"``; a
    leading ``"module."`` (DataParallel) is stripped. Loading uses ``weights_only=True``, so
    pickled code never runs. Every failure raises a one-line ``UserError``.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (zip, pickle, EOF, OS errors)
        raise UserError(f"corrupt or unreadable checkpoint {path}: {_short(exc)}") from exc
    state = _strip_module_prefix(_find_state_dict(obj, path))
    problem = _mismatch(model.state_dict(), state)
    if problem:
        raise UserError(f"checkpoint {path} does not match the model: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # e.g. a module whose own loader rejects a value
        raise UserError(f"checkpoint {path} could not be loaded: {_short(exc)}") from exc


def _find_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    # Training scripts (FTWT, LayerPrune, torchvision references) wrap the weights in a dict.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _looks_like_state_dict(inner):
                return inner
        if _looks_like_state_dict(obj):
            return obj
    raise UserError(f"checkpoint {path} is not a state dict (found {type(obj).__name__}"
                    f"{_keys_hint(obj)}); expected a state dict or a dict with 'state_dict' "
                    f"or 'model'")


def _looks_like_state_dict(obj: Mapping) -> bool:
    return (len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and any(isinstance(v, torch.Tensor) for v in obj.values()))


def _keys_hint(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return ""
    keys = [repr(k) for k in list(obj)[:4]]
    return f" with keys {', '.join(keys)}{', ...' if len(obj) > 4 else ''}" if keys else " (empty)"


def _strip_module_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` with a leading ``"module."`` removed from every key that has one."""
    prefix = "module."
    if not any(k.startswith(prefix) for k in state):
        return state
    out: OrderedDict[str, Any] = OrderedDict(
        (k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        # Module versions (e.g. BatchNorm's) live here; keep them under the stripped names.
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            (k[len(prefix):] if k.startswith(prefix) else ("" if k == "module" else k), v)
            for k, v in metadata.items())
    return out


def _mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> str:
    """One-line description of missing / unexpected / shape-mismatched keys, or ``""``."""
    # Checkpoints from old PyTorch lack BatchNorm's num_batches_tracked; BN's loader fills it in.
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and isinstance(given[k], torch.Tensor)
              and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {_first(unexpected)})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape-mismatched (e.g. {k!r}: checkpoint "
                     f"{list(given[k].shape)} vs model {list(expected[k].shape)})")
    return "; ".join(parts)


def _first(keys: list[str], n: int = 2) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def _short(exc: BaseException) -> str:
    """``Type: the informative part of the message``, on one line and cut to a readable length."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    # torch's weights_only errors bury the real reason after a long generic preamble.
    _, marker, detail = text.partition("WeightsUnpickler error:")
    if marker:
        text = detail
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    text = text.split(". ")[0].rstrip(".")  # first sentence: the rest is generic advice
    if "Unsupported global" in text:
        text += " (a pickled object, not weights: save model.state_dict() instead)"
    if not text and isinstance(exc, EOFError):
        text = "empty or truncated file"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."
