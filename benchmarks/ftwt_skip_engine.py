"""FTWT real skipping at batch 1 on torch eager: dense vs the skipping engines, side by side in ONE
process (interleaved, repeated, medians), on a sweep's trained networks; prints each ratio next to
the issue's goal.

    python benchmarks/ftwt_skip_engine.py --out SWEEP_OUT [--models resnet56,vgg16_bn]
        [--budget 0.75,decoupled,max,0.5,gt] [--threads 2] [--inputs 32] [--rounds 5]
        [--previous a1d1a86] [--kernels] [--layers vgg16_bn]

Reads the sweep's artifacts (``none`` default = the dense conv+BN+ReLU network; ``ftwt`` masked =
the trained, calibrated FTWTNet of ``--budget``) and its pool of real test inputs. Networks timed,
each on the same inputs, interleaved input by input, ``--rounds`` times:

- ``dense``: the baseline the sweep's speed-ups divide by;
- ``previous``: the engine of git revision ``--previous`` (the module-per-layer engine, loaded
  with ``git show``; left out if git cannot);
- ``plan-python``: this engine's plan run by the Python interpreter (what TorchScript removes);
- ``plan``: this engine as deployed (``_run`` compiled by TorchScript);
- ``plan@1thread``: the same with one intra-op thread for the whole inference (thread setting);
- ``plan-all``: this engine with every filter selected (``skip-all``: its cost at dense compute;
  checked against the same weights unmasked).

It prints the per-sample MACs reduction of the masked network on the pool (``measure_macs``), the
largest |skip - masked| / max(1, max |masked|) over the timed inputs, p50 over all timings and
dense p50 / p50, and for resnet56 / vgg16_bn the goal (issue 14: >= 1.4x at >= 50 % reduction,
>= 2.0x at >= 60 %, at 2 threads) with met / MISSED.

``--layers vgg16_bn`` prints instead where a VGG plan's time goes, layer by layer (predictor, weight
gather, conv, pools, against the baseline's conv+BN+ReLU).

``--kernels`` first prints the batch-1 conv kernel table behind ``skip._conv_single`` (THNN,
mkldnn NCHW / channels-last, im2col by one gather + mm, nine shifted mm, NNPACK; 1 and 2 threads)
and the weight-gather table (two index_selects vs one flat index_select), on shapes the trained
networks run.
"""
from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.ftwt import skip  # noqa: E402
from methods.ftwt.cost import measure_macs  # noqa: E402

GOALS = {"resnet56": (1.4, 0.50), "vgg16_bn": (2.0, 0.60)}  # issue 14: speed-up at >= reduction


def _previous_engine(rev: str):
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:methods/ftwt/skip.py"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "ftwt_skip_previous.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ftwt_skip_previous", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(out: Path, model: str, budget: str | None):
    rows = [r for r in csv.DictReader(open(out / "results.csv"))
            if r["model"] == model and r["target"] == "torch-eager" and r["artifact"]]
    ftwt = [r for r in rows if r["method"] == "ftwt" and r["variant"] == "masked"]
    if budget is not None:
        ftwt = [r for r in ftwt if r["budget"] == budget]
    if not ftwt:
        raise SystemExit(f"no ftwt masked artifact for {model} (budget {budget}) in {out}")
    dense = [r for r in rows if r["method"] == "none" and r["variant"] == "default"][0]
    pools = sorted(glob.glob(str(out / "artifacts" / "data" / f"{model}-*" / "pool.npy")) +
                   glob.glob(str(out / "work" / f"{model}-*" / "pool.npy")))  # before: work/
    load = lambda r: torch.load(out / r["artifact"], weights_only=False, map_location="cpu").eval()  # noqa: E731
    return load(dense), load(ftwt[0]), ftwt[0]["budget"], torch.from_numpy(np.load(pools[0]))


class _Threads(torch.nn.Module):
    """Runs ``inner`` with ``n`` intra-op threads (restored afterwards)."""

    def __init__(self, inner, n: int):
        super().__init__()
        self.inner, self.n = inner, n

    def forward(self, x):
        before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        try:
            return self.inner(x)
        finally:
            torch.set_num_threads(before)


def _time_networks(nets: dict, xs: list, rounds: int) -> dict[str, float]:
    times = {k: [] for k in nets}
    with torch.inference_mode():
        for _ in range(rounds):
            for x in xs:
                for k, m in nets.items():
                    m(x)  # the same input once before timing it (allocator, caches)
                    t0 = time.perf_counter()
                    m(x)
                    times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def networks(args) -> None:
    previous = _previous_engine(args.previous)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, inference_mode; p50 ms over "
          f"{args.inputs} real inputs x {args.rounds} rounds, interleaved; ratio = dense p50 / p50")
    for model in args.models.split(","):
        dense, masked, budget, pool = _load(Path(args.out), model, args.budget)
        shape = tuple(pool.shape[1:])
        red = 1.0 - float(measure_macs(masked, pool).mean()) / masked.spec.dense_macs()
        xs = [pool[i:i + 1] for i in range(args.inputs)]
        plan = skip.build_skip(masked, input_shape=shape)
        python = skip.build_skip(masked, input_shape=shape).use_python()
        nets = {"dense": dense}
        if previous is not None:
            nets["previous"] = previous.build_skip(masked)
        nets.update({"plan-python": python, "plan": plan, "plan@1thread": _Threads(plan, 1),
                     "plan-all": skip.build_skip(masked, select_all=True, input_shape=shape)})
        with torch.inference_mode():
            ref = masked(pool[:args.inputs])
            scale = max(1.0, float(ref.abs().max()))
            err = {k: float((torch.cat([m(x) for x in xs]) - ref).abs().max()) / scale
                   for k, m in nets.items() if k not in ("dense", "plan-all")}
            # skip-all computes the unmasked function of the same (fine-tuned) weights
            unmasked = masked.set(gating=False)(pool[:args.inputs])
            masked.set(gating=True)
            all_err = float((torch.cat([nets["plan-all"](x) for x in xs]) - unmasked).abs().max()) / scale
        p50 = _time_networks(nets, xs, args.rounds)
        print(f"\n{model} (ftwt {budget}): MACs reduction {red:.1%} on {len(pool)} pool inputs; "
              f"plan engine: {plan.engine}")
        for k, v in p50.items():
            note = (f"rel err vs masked {err[k]:.0e}" if k in err else
                    f"rel err vs unmasked {all_err:.0e}" if k == "plan-all" else "")
            print(f"  {k:<13} p50 {v:7.3f} ms  x{p50['dense'] / v:5.2f}  {note}")
        if model in GOALS and args.threads == 2:
            goal, at = GOALS[model]
            got = p50["dense"] / p50["plan"]
            ok = got >= goal and red >= at
            print(f"  goal: >= {goal:.1f}x at >= {at:.0%} reduction, 2 threads: plan x{got:.2f} at {red:.1%} "
                  f"-> {'met' if ok else 'MISSED'}")


def layers(args) -> None:
    """Per-layer time of a VGG plan, step by step in Python (predictor, weight gather, conv,
    pools), beside the baseline's conv+BN+ReLU per layer: where skipping pays and where not."""
    dense, masked, budget, pool = _load(Path(args.out), args.layers, args.budget)
    if masked.family != "vgg_cifar":
        raise SystemExit("--layers times VGG (a chain of convs) only")
    sk = skip.build_skip(masked, input_shape=tuple(pool.shape[1:]))
    w_all, b_all, pw, _, npb, idx, convs = sk._args()[:7]
    xs = [pool[i:i + 1] for i in range(12)]
    t: dict[str, list] = {}

    def tick(key, t0, value=None):
        t.setdefault(key, []).append(time.perf_counter() - t0 if value is None else value)

    with torch.inference_mode():
        for _ in range(4):
            for x in xs:
                live = None
                for j, d in enumerate(convs):
                    t0 = time.perf_counter()
                    e = x.amax(dim=(2, 3))
                    if live is not None:
                        e = torch.zeros(1, d.c_in).index_copy_(1, live, e)
                    sel = torch.mm(torch.softmax(e, dim=1), pw[j]).gt_(npb[j]).view(-1).nonzero().view(-1)
                    b = b_all[j].index_select(0, sel)
                    tick((j, "predictor"), t0)
                    t0 = time.perf_counter()
                    if live is None:
                        w = w_all[j].index_select(0, sel)
                    elif d.flat:
                        rows = (sel * d.c_in).view(-1, 1).add(live).view(-1)
                        w = w_all[j].view(-1, 9).index_select(0, rows).view(sel.shape[0], live.shape[0], 3, 3)
                    else:
                        w = w_all[j].index_select(0, sel).index_select(1, live)
                    tick((j, "gather"), t0)
                    tick((j, "kept"), 0, (x.shape[1], sel.shape[0]))
                    t0 = time.perf_counter()
                    y = torch.relu_(skip._conv_single(x, w, b, d, idx[j]))
                    tick((j, "conv"), t0)
                    t0 = time.perf_counter()
                    x, live = skip._post(y, d.post), sel
                    tick((j, "pools"), t0)
            for x in xs:
                feats, i, j = dense.features, 0, 0
                while i < len(feats):
                    t0 = time.perf_counter()
                    if isinstance(feats[i], torch.nn.Conv2d):
                        x = feats[i + 2](feats[i + 1](feats[i](x)))
                        tick((j, "dense"), t0)
                        i, j = i + 3, j + 1
                    else:
                        x = feats[i](x)
                        tick((j - 1, "dense pool"), t0)
                        i += 1
    print(f"\n{args.layers} (ftwt {budget}), per layer, us (median over 12 inputs x 4)")
    print("  layer  in->out (dense)  kept in/out  predictor  gather    conv   pools |   dense  dense pool")
    med = lambda j, k: float(np.median(t[(j, k)])) * 1e6 if (j, k) in t else 0.0  # noqa: E731
    for j, d in enumerate(convs):
        kin, kout = np.mean([a for a, _ in t[(j, "kept")]]), np.mean([o for _, o in t[(j, "kept")]])
        co = w_all[j].shape[0]
        print(f"  {j:5d}  {d.c_in:3d}->{co:3d} @{d.in_h:2d}  {kin:5.0f}/{kout:<5.0f}  {med(j, 'predictor'):9.1f} "
              f"{med(j, 'gather'):7.1f} {med(j, 'conv'):7.1f} {med(j, 'pools'):7.1f} | {med(j, 'dense'):7.1f} "
              f"{med(j, 'dense pool'):10.1f}")


# ---------------------------------------------------------------------------------- kernel tables
def _t(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return float(np.median(runs))


def _im2col_mm(x, w, b):
    c, h, wd = x.shape[1:]
    idx = skip._cols_index((h, wd), 3, 1, 1, h, wd)
    cols = F.pad(x, (1, 1, 1, 1)).view(c, -1).index_select(1, idx).view(c * 9, h * wd)
    return torch.addmm(b[:, None], w.view(w.shape[0], -1), cols).view(1, -1, h, wd)


def _shifted_mm(x, w9, b):
    """Nine GEMMs on shifted views of the padded input (no im2col copy), on a padded-width grid."""
    c, h, wd = x.shape[1:]
    wp = wd + 2
    xp = F.pad(x, (1, 1, 1, 2)).view(c, -1)
    n = h * wp
    out = b[:, None].expand(w9.shape[1], n).contiguous()
    for k in range(9):
        off = (k // 3) * wp + k % 3
        out.addmm_(w9[k], xp[:, off:off + n])
    return out.view(1, -1, h, wp)[:, :, :, :wd]


def kernels() -> None:
    shapes = [(12, 10, 32), (16, 16, 32), (25, 20, 16), (32, 32, 16), (51, 41, 8), (64, 64, 8),
              (38, 38, 32), (77, 77, 16), (154, 154, 8), (307, 307, 4)]
    print("batch-1 3x3 conv kernels, us (median of 7 x 200 calls)")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for ci, co, hw in shapes:
            torch.manual_seed(0)
            x, w, b = torch.randn(1, ci, hw, hw).relu(), torch.randn(co, ci, 3, 3), torch.randn(co)
            w9 = w.permute(2, 3, 0, 1).reshape(9, co, ci).contiguous()
            xcl = x.contiguous(memory_format=torch.channels_last)
            ref = F.conv2d(x, w, b, 1, 1)
            for fn in (_im2col_mm(x, w, b), _shifted_mm(x, w9, b)):
                assert (fn - ref).abs().max() < 1e-3
            with torch.inference_mode():
                r = {"THNN": _t(lambda: torch._C._nn.thnn_conv2d(x, w, [3, 3], b, [1, 1], [1, 1])),
                     "F.conv2d": _t(lambda: F.conv2d(x, w, b, 1, 1)),
                     "mkldnn": _t(lambda: torch.mkldnn_convolution(x, w, b, [1, 1], [1, 1], [1, 1], 1)),
                     "mkldnn-NHWC": _t(lambda: torch.mkldnn_convolution(xcl, w, b, [1, 1], [1, 1], [1, 1], 1)),
                     "im2col+mm": _t(lambda: _im2col_mm(x, w, b)),
                     "9-shifted-mm": _t(lambda: _shifted_mm(x, w9, b))}
                if torch._nnpack_available():
                    r["NNPACK"] = _t(lambda: torch._nnpack_spatial_convolution(x, w, b, [1, 1], [1, 1]))
            cells = "  ".join(f"{k} {v:6.1f}" for k, v in r.items())
            print(f"  {threads} thr {ci:3d}->{co:3d} @ {hw:2d}x{hw:<2d} {cells}")
    print("weight gathers W[sel][:, live], us")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for co, ci, ns, nl in [(16, 16, 10, 12), (64, 64, 40, 50), (512, 512, 300, 300), (512, 512, 150, 150)]:
            torch.manual_seed(0)
            w = torch.randn(co, ci, 3, 3)
            wf = w.view(co * ci, 9)
            sel, live = torch.randperm(co)[:ns].sort().values, torch.randperm(ci)[:nl].sort().values
            with torch.inference_mode():
                r = {"2 index_select": _t(lambda: w.index_select(0, sel).index_select(1, live)),
                     "1 flat index_select": _t(lambda: wf.index_select(0, (sel * ci).view(-1, 1).add(live).view(-1))),
                     "rows only": _t(lambda: w.index_select(0, sel))}
            print(f"  {threads} thr {co}x{ci} sel {ns} live {nl}: " + "  ".join(f"{k} {v:6.1f}" for k, v in r.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "results" / "digits-ftwt"))
    ap.add_argument("--models", default="resnet56,vgg16_bn")
    ap.add_argument("--budget", default=None, help="the ftwt row's budget text as in results.csv "
                    "(default: the first ftwt budget of each model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--previous", default="a1d1a86", help="git revision of the previous engine")
    ap.add_argument("--kernels", action="store_true", help="print the kernel and gather tables first")
    ap.add_argument("--layers", default=None, metavar="MODEL",
                    help="only the per-layer table of MODEL (a VGG): predictor, gather, conv vs dense")
    args = ap.parse_args()
    if args.kernels:
        kernels()
    torch.set_num_threads(args.threads)
    if args.layers:
        layers(args)
        return
    networks(args)


if __name__ == "__main__":
    main()
