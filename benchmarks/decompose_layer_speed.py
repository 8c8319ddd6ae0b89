"""Where does decomposition pay for training on this CPU? One 3x3 conv against its Tucker-2 chain.

    python benchmarks/decompose_layer_speed.py [--threads 2] [--batches 32,128] [--rounds 5]
                                               [--ranks 0.05,0.25,0.5,0.8] [--layouts nchw,cl]

For every (channels, spatial size) where a 3x3 C->C conv sits in the CIFAR networks (ResNet-20/56
stages 16@32, 32@16, 64@8; VGG16-bn blocks 64@32 ... 512@2) and every batch size, it times one
training step's worth of work for that layer: forward and backward (input and weight gradients,
as inside a network), of

- ``dense``: the ``nn.Conv2d(C, C, 3, padding=1)``;
- ``r=f``: the method's own chain (``factors.TuckerConv``: 1x1 C->R, 3x3 R->R, 1x1 R->C) at
  R = ceil(f * C), the rank ``ratio=f`` picks. The default fractions are the ranks the method's rules
  gave on these networks: ``ratio=0.25``/``0.5``; 0.8 ~ ``energy=0.9`` (51-53 of 64, the 90%-energy
  rank measured by ``diagnose.py``, README); 0.05 ~ EVBMF (1-6 of 64 after training, same table);
- ``bn+relu``: the BatchNorm2d + ReLU that follow the conv in both networks (unchanged by the
  decomposition), so that the per-unit ratio ``(dense + bn+relu) / (chain + bn+relu)`` can be read.

Both memory layouts are timed (``nchw`` contiguous, ``cl`` channels_last: oneDNN's native layout
on CPU). All variants of a (case, batch, layout) are timed interleaved, round after round (each
round times every variant ``--inner`` times and keeps the minimum); the table gives medians over
rounds of dense time / chain time (>1: the chain is faster) and the MACs ratio beside them.
Run it alone (under the lock): it times.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from harness.macs import count_macs
from methods.decompose.factors import TuckerConv

# (channels, spatial size, where the layer appears)
CASES = [(16, 32, "resnet s1"), (32, 16, "resnet s2"), (64, 8, "resnet s3"), (64, 32, "vgg b1"),
         (128, 16, "vgg b2"), (256, 8, "vgg b3"), (512, 4, "vgg b4"), (512, 2, "vgg b5")]


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    """Forward + backward of one layer (input and parameter gradients), grads dropped after."""
    module(x).backward(grad)
    x.grad = None
    for p in module.parameters():
        p.grad = None


def _time(fn, inner: int) -> float:
    best = math.inf
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def variants(c: int, ranks: list[float]) -> dict[str, nn.Module]:
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    out: dict[str, nn.Module] = {"dense": conv}
    for f in ranks:
        r = max(1, math.ceil(f * c))
        out[f"r={f:g}"] = TuckerConv(conv, r, r)  # random factors: the speed does not depend on them
    out["bn+relu"] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
    return out


def measure(c: int, hw: int, batch: int, layout: str, ranks: list[float], rounds: int,
            inner: int) -> dict[str, float]:
    """Median over rounds of each variant's best-of-``inner`` seconds."""
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    mods = {k: m.train().to(memory_format=fmt) for k, m in variants(c, ranks).items()}
    x = torch.randn(batch, c, hw, hw).to(memory_format=fmt).requires_grad_()
    g = torch.randn(batch, c, hw, hw).to(memory_format=fmt)
    times: dict[str, list[float]] = {k: [] for k in mods}
    for k, m in mods.items():  # warm-up: oneDNN primitive creation, allocator
        _step(m, x, g)
    for _ in range(rounds):
        for k, m in mods.items():
            times[k].append(_time(lambda m=m: _step(m, x, g), inner))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--ranks", default="0.05,0.25,0.5,0.8")
    ap.add_argument("--layouts", default="nchw,cl")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner", type=int, default=2)
    ap.add_argument("--cases", default="", help="comma list of C@HW to keep, e.g. 64@32,512@4 (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ranks = [float(r) for r in args.ranks.split(",")]
    keep = set(filter(None, args.cases.split(",")))
    cases = [cs for cs in CASES if not keep or f"{cs[0]}@{cs[1]}" in keep]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x best of "
          f"{args.inner}; fwd+bwd of one 3x3 CxC conv vs its Tucker-2 chain at R = ceil(f C)")
    heads = [f"r={f:g}" for f in ranks]
    print(f"\n| batch | layout | C@HW | where | dense ms | bn+relu ms | " + " | ".join(
        f"{h} dense/chain (MACs x, unit)" for h in heads) + " |")
    print("|---" * (6 + len(heads)) + "|")
    for batch in [int(b) for b in args.batches.split(",")]:
        for layout in args.layouts.split(","):
            for c, hw, where in cases:
                t = measure(c, hw, batch, layout, ranks, args.rounds, args.inner)
                dense_macs = count_macs(nn.Conv2d(c, c, 3, padding=1), (c, hw, hw))
                cells = []
                for h, f in zip(heads, ranks):
                    r = max(1, math.ceil(f * c))
                    chain_macs = count_macs(TuckerConv(nn.Conv2d(c, c, 3, padding=1), r, r), (c, hw, hw))
                    unit = (t["dense"] + t["bn+relu"]) / (t[h] + t["bn+relu"])
                    cells.append(f"**{t['dense'] / t[h]:.2f}** ({dense_macs / chain_macs:.1f}, {unit:.2f})")
                print(f"| {batch} | {layout} | {c}@{hw} | {where} | {t['dense'] * 1e3:.2f} | "
                      f"{t['bn+relu'] * 1e3:.2f} | " + " | ".join(cells) + " |", flush=True)
    print("\nlayout nchw vs cl for the dense conv is in the 'dense ms' column of the two layouts.")


if __name__ == "__main__":
    main()
