"""Model registry, MAC/parameter counter and checkpoint loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import UserError
from harness.macs import CONVENTION, Cost, count_cost, size_bytes
from harness.models import MODELS, ModelSpec, build_model, load_checkpoint, model_spec

ALL_MODELS = MODELS.names()


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    """Each model built once (10 classes) and shared by the per-model tests of this file."""
    cache: dict[str, nn.Module] = {}
    return cache


def _get(built: dict[str, nn.Module], name: str) -> nn.Module:
    if name not in built:
        torch.manual_seed(0)
        built[name] = build_model(name, num_classes=10)
    return built[name]


def _single_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"not a single line: {msg!r}"
    return msg


# --------------------------------------------------------------------------------- registry

def test_registry_names() -> None:
    expected = {"resnet20", "resnet56", "resnet110", "vgg16_bn", "mobilenet_v2",
                "resnet18", "resnet50", "mobilenet_v2_imagenet", "vgg16_bn_imagenet"}
    assert expected <= set(ALL_MODELS)
    for name in expected:
        spec = model_spec(name)
        assert isinstance(spec, ModelSpec) and spec.name == name
        assert spec.input_size == (32 if spec.family.endswith("_cifar") else 224)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape(built: dict[str, nn.Module], name: str) -> None:
    model = _get(built, name).eval()
    size = model_spec(name).input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_picklable(built: dict[str, nn.Module], name: str, tmp_path) -> None:
    model = _get(built, name)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    again = torch.load(path, weights_only=False)
    assert type(again) is type(model)
    assert again.state_dict().keys() == model.state_dict().keys()


def test_unknown_model_did_you_mean() -> None:
    with pytest.raises(UserError) as exc:
        build_model("resnet5")
    msg = _single_line(exc)
    assert "did you mean" in msg and "resnet56" in msg


def test_bad_num_classes() -> None:
    with pytest.raises(UserError):
        build_model("resnet20", num_classes=0)


def test_structure_for_plugins() -> None:
    resnet = build_model("resnet56")
    assert len(resnet.layer1) == len(resnet.layer2) == len(resnet.layer3) == 9
    first = resnet.layer2[0]
    assert type(first.shortcut).__name__ == "PadShortcut"
    assert sum(p.numel() for p in first.shortcut.parameters()) == 0
    assert isinstance(resnet.layer1[0].shortcut, nn.Identity)

    mbv2 = build_model("mobilenet_v2")
    skips = [b.use_skip for b in mbv2.bottlenecks]
    assert len(skips) == 17 and sum(skips) == 10
    assert isinstance(build_model("vgg16_bn").features, nn.Sequential)


# ------------------------------------------------------------------------ reference costs

# FTWT's constants (cifar.py, CIFAR-10, 32x32, 10 classes), checked to 0.5 %.
CIFAR_REFERENCE = {
    "resnet56": (125.49e6, 0.853e6),
    "vgg16_bn": (313.48e6, 14.73e6),
    "mobilenet_v2": (91.15e6, 2.297e6),
}


@pytest.mark.parametrize("name", sorted(CIFAR_REFERENCE))
def test_cifar_reference_costs(built: dict[str, nn.Module], name: str) -> None:
    macs_ref, params_ref = CIFAR_REFERENCE[name]
    cost = count_cost(_get(built, name), (3, 32, 32))
    assert cost.macs == pytest.approx(macs_ref, rel=0.005)
    assert cost.params == pytest.approx(params_ref, rel=0.005)


# torchvision documents GFLOPS (really MACs) rounded to two decimals in G: the reference 1.81
# stands for [1.805, 1.815) G and 0.30 for [0.295, 0.305) G, so the honest tolerance is half a
# unit of the last printed digit (5 M MACs): 0.3 % for ResNet-18, 1.7 % for MobileNetV2.
# Parameter counts are exact integers in the docs and are compared exactly.
IMAGENET_REFERENCE = {
    "resnet18": (1.81e9, 11_689_512),
    "resnet50": (4.09e9, 25_557_032),
    "mobilenet_v2_imagenet": (0.30e9, 3_504_872),
}
HALF_UNIT = 0.005e9


@pytest.mark.parametrize("name", sorted(IMAGENET_REFERENCE))
def test_imagenet_reference_costs(name: str) -> None:
    macs_ref, params_ref = IMAGENET_REFERENCE[name]
    cost = count_cost(build_model(name, num_classes=1000), (3, 224, 224))
    assert cost.params == params_ref
    assert abs(cost.macs - macs_ref) <= HALF_UNIT


# --------------------------------------------------------------------------------- counter

class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=0)      # 3x10x10 -> 8x8x8
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=4)  # 8x8x8 -> 8x8x8
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_hand_computed_macs() -> None:
    conv = (8 * 8 * 8) * 3 * 3 * 3          # out elements * in_ch * kh * kw = 13,824
    grouped = (8 * 8 * 8) * (8 // 4) * 3 * 3  # groups divide the input channels: 9,216
    linear = 512 * 5                        # in * out for one row: 2,560
    params = (8 * 3 * 9 + 8) + (8 + 8) + (8 * 2 * 9 + 8) + (512 * 5 + 5)
    assert count_cost(_Tiny(), (3, 10, 10)) == Cost(macs=conv + grouped + linear, params=params)


def test_counter_does_not_mutate() -> None:
    model = _Tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_cost(model, (3, 10, 10))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.conv._forward_hooks


def test_size_bytes_excludes_integer_buffers() -> None:
    model = _Tiny()
    params = sum(p.numel() for p in model.parameters())
    assert size_bytes(model) == 4 * (params + 8 + 8)   # + BN running mean and var
    assert size_bytes(model.half()) == 2 * (params + 8 + 8)


def test_convention_is_one_sentence() -> None:
    assert "MACs" in CONVENTION and "\n" not in CONVENTION


# ------------------------------------------------------------------------------ checkpoints

def _fresh(name: str = "resnet20", num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "dataparallel"])
def test_checkpoint_round_trip(tmp_path, wrap: str) -> None:
    src = _fresh(seed=1)
    state = src.state_dict()
    obj = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3, "best_acc": 93.1},
        "model": {"model": state},
        "dataparallel": {"state_dict": {"module." + k: v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    dst = _fresh(seed=2)
    load_checkpoint(dst, path)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in state.items())


def test_checkpoint_missing_file(tmp_path) -> None:
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh(), tmp_path / "nope.pth")
    assert "not found" in _single_line(exc)


def test_checkpoint_garbage(tmp_path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01not a checkpoint\n" * 50)
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh(), path)
    assert "corrupt or unreadable" in _single_line(exc)


def test_checkpoint_truncated(tmp_path) -> None:
    whole, cut = tmp_path / "whole.pth", tmp_path / "cut.pth"
    torch.save(_fresh().state_dict(), whole)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh(), cut)
    assert "corrupt or unreadable" in _single_line(exc)


def test_checkpoint_not_a_state_dict(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh(), path)
    assert "not a state dict" in _single_line(exc)


def test_checkpoint_key_mismatch(tmp_path) -> None:
    path = tmp_path / "r20.pth"
    torch.save(_fresh().state_dict(), path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh("resnet56"), path)
    msg = _single_line(exc)
    assert "missing" in msg and "layer1.3" in msg


def test_checkpoint_shape_mismatch(tmp_path) -> None:
    path = tmp_path / "r20_100.pth"
    torch.save(_fresh(num_classes=100).state_dict(), path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(_fresh(num_classes=10), path)
    msg = _single_line(exc)
    assert "2 shape-mismatched" in msg and "fc.weight" in msg
