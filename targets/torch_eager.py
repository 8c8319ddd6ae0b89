"""PyTorch eager execution: the reference every exported target is compared against.

Runs the harness's own pickled module on CPU, or on CUDA when one is present. On CUDA, ``run``
includes the host-to-device copy of the input and the device-to-host copy of the logits, so the
harness's host clock measures what an application sees; the CUDA-event ``timer`` gives device time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from harness.errors import UserError
from harness.knobs import Knob
from harness.timing import CudaEventTimer, HostTimer, Timer
from targets.base import Artifact, Availability, Session, Target

_PRECISIONS = ("fp32", "tf32")


@dataclass
class TorchEagerSession(Session):
    model: Any = None
    device: str = "cpu"
    restore: dict[str, str] = field(default_factory=dict)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` as a fresh numpy array (never aliasing an earlier result)."""
        with torch.inference_mode():
            inp = torch.from_numpy(x)
            if self.device == "cuda":
                inp = inp.to("cuda")
            out = self.model(inp)
            # .cpu() is a blocking D2H copy on CUDA, so the result is complete when we return.
            return out.cpu().numpy()

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timer(self) -> Timer:
        """CUDA events around one query on a GPU (device time of H2D + compute + D2H), else the
        host clock."""
        return CudaEventTimer(self.run) if self.device == "cuda" else HostTimer(self.run, self.sync)

    def close(self) -> None:
        _set_fp32_precision(self.restore)
        self.model = None


class TorchEager(Target):
    key = "torch-eager"
    summary = "PyTorch eager, eval mode, inference_mode (CPU, or CUDA when present)"
    needs = "torch"
    packages = ("torch",)

    # eager PyTorch runs any shapes, including weights gathered per input (FTWT's skipping)
    capabilities = frozenset({"runtime_weight_shapes"})
    options = (
        Knob("device", str, choices=("auto", "cpu", "cuda"), default="auto",
             help="auto: CUDA when present, else CPU"),
        Knob("precision", str, choices=_PRECISIONS, default="fp32",
             help="fp32 (IEEE, TF32 off) or tf32 (CUDA only)"),
    )

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().parse_options(raw)
        device = _pick_device(opts["device"])
        if opts["precision"] != "fp32" and device != "cuda":
            raise UserError(f"torch-eager: precision {opts['precision']!r} is not supported on {device}")
        return opts

    def availability(self, options: Mapping[str, Any] | None = None) -> Availability:
        """Always available: torch is a core dependency."""
        return Availability(True)

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> TorchEagerSession:
        """Load the pickled module, move it to the chosen device, and record how it will run."""
        opts = self.parse_options(options or {})
        device, precision = _pick_device(opts["device"]), opts["precision"]
        if artifact.torch_path is None:
            raise UserError(f"torch-eager needs a pickled torch module; artifact {artifact.name!r} has none")
        torch.set_num_threads(threads)  # global: also governs the CPU side of a CUDA run
        # weights_only=False: our own pickled module (code objects), never a user's file.
        model = torch.load(artifact.torch_path, weights_only=False, map_location="cpu").eval()
        restore = {}
        if device == "cuda":
            model = model.to("cuda")
            restore = _set_fp32_precision(_precision_flags(precision))
        session = TorchEagerSession(batch=batch, model=model, device=device, restore=restore)
        session.info.update(_info(device, precision, threads, scenario))
        return session


def _pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("torch-eager: device 'cuda' requested but no CUDA device is available")
    return choice


def _precision_flags(precision: str) -> dict[str, str]:
    # PyTorch runs cuDNN convs in TF32 by default on Ampere+; "fp32" must mean IEEE fp32 so that
    # it is comparable with the fp32 rows of other targets.
    mode = "ieee" if precision == "fp32" else "tf32"
    return {"conv": mode, "matmul": mode}


def _set_fp32_precision(flags: Mapping[str, str]) -> dict[str, str]:
    """Apply TF32 flags through the new API only (mixing it with allow_tf32 raises); return the
    previous values so close() can restore them."""
    previous = {"conv": torch.backends.cudnn.conv.fp32_precision,
                "matmul": torch.backends.cuda.matmul.fp32_precision}
    if "conv" in flags:
        torch.backends.cudnn.conv.fp32_precision = flags["conv"]
    if "matmul" in flags:
        torch.backends.cuda.matmul.fp32_precision = flags["matmul"]
    return previous if flags else {}


def _info(device: str, precision: str, threads: int, scenario: str) -> dict[str, Any]:
    info: dict[str, Any] = {"precision": precision,
                            "threads": torch.get_num_threads(), "threads_requested": threads,
                            "device": device, "scenario": scenario, "mode": "eval+inference_mode",
                            "batchnorm_folded": False}
    if device == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                     "cudnn_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
                     "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "timing_scope": "numpy in -> H2D copy -> compute -> D2H copy -> numpy out, "
                                     "timed by CUDA events around that sequence"})
    else:
        info["timing_scope"] = "host numpy in -> numpy out"
    return info
