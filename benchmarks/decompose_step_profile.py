"""What a training step costs, piece by piece: data, forward, backward, optimizer, and the convs' share.

    python benchmarks/decompose_step_profile.py [--model vgg16_bn] [--batch 128] [--data digits]
                                                [--ratio 0.25] [--threads 2] [--rounds 5]

For the dense network and its decomposed twin (``decompose_model`` at ``ratio=``, untrained
weights: speed does not depend on them), in each memory layout (NCHW, channels_last) and with
both SGD implementations (per-tensor loop, ``foreach``), it times the pieces of ``harness.train.fit``'s
step on real batches of ``--data`` (the training loader with its augmentation): drawing a batch,
forward + loss, backward, ``zero_grad`` + ``optimizer.step``. Configurations are timed interleaved,
round after round; medians over rounds. Then one ``torch.profiler`` pass per network/layout gives
the share of the step spent inside conv kernels (forward and backward) against everything else
(BN, ReLU, pooling, autograd bookkeeping, the optimizer). Run it alone (under the lock): it times.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from harness.data import load_data, make_loader
from harness.models import build_model
from harness.train import TrainRecipe, make_sgd
from methods.decompose.ranks import RankPolicy
from methods.decompose.surgery import decompose_model


def _pieces(model: nn.Module, opt: torch.optim.Optimizer, batches, fmt) -> dict[str, float]:
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    x, y = next(batches)
    x = x.contiguous(memory_format=fmt)
    t1 = time.perf_counter()
    loss = loss_fn(model(x), y)
    t2 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    return {"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0}


def _conv_share(model: nn.Module, opt, batches, fmt) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            _pieces(model, opt, batches, fmt)
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    total = sum(e.self_cpu_time_total for e in events)
    return conv / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, input_size=32)
    torch.manual_seed(0)
    dense = build_model(args.model, num_classes=data.num_classes)
    thin = copy.deepcopy(dense)
    decompose_model(thin, (3, 32, 32), RankPolicy("ratio", args.ratio))
    recipe = TrainRecipe(batch_size=args.batch)
    loader = make_loader(data.train, batch_size=args.batch, shuffle=True, seed=0, augment=data.augment)

    def batches():
        while True:
            for b in loader:
                if len(b[1]) == args.batch:
                    yield b

    it = batches()
    configs = {}
    for net_name, net in (("dense", dense), (f"ratio={args.ratio:g}", thin)):
        for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            for foreach in (False, True):
                m = copy.deepcopy(net).train().to(memory_format=fmt)
                opt = make_sgd(m, recipe)
                for g in opt.param_groups:
                    g["foreach"] = foreach
                configs[(net_name, layout, foreach)] = (m, opt, fmt)
    times = {k: [] for k in configs}
    for k, (m, opt, fmt) in configs.items():  # warm-up
        _pieces(m, opt, it, fmt)
    for _ in range(args.rounds):
        for k, (m, opt, fmt) in configs.items():
            times[k].append(_pieces(m, opt, it, fmt))
    print(f"{args.model}, batch {args.batch}, {args.data}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds (ms)\n")
    print("| network | layout | SGD | data | forward | backward | optimizer | step | conv share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, (m, opt, fmt) in configs.items():
        med = {p: statistics.median(t[p] for t in times[k]) * 1e3 for p in times[k][0]}
        share = _conv_share(m, opt, it, fmt) if k[2] else None
        print(f"| {k[0]} | {k[1]} | {'foreach' if k[2] else 'loop'} | {med['data']:.1f} | {med['forward']:.1f} | "
              f"{med['backward']:.1f} | {med['optimizer']:.1f} | {med['step']:.1f} | "
              f"{'' if share is None else f'{100 * share:.0f}%'} |", flush=True)


if __name__ == "__main__":
    main()
