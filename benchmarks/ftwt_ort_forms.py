"""Which in-graph form of run-time channel selection pays in ONNX Runtime? (measurement script)

    python benchmarks/ftwt_ort_forms.py [--threads 1]

One conv layer, half of its output filters (and, for the chained case, half of its input
channels) selected at run time by indices fed as graph inputs. Forms compared, each under
ORT_ENABLE_ALL and ORT_ENABLE_EXTENDED, interleaved in one process (ratios matter, the machine is
shared):

- ``dense``: the static full conv (constant weights; NCHWc under ALL);
- ``static_half``: a physically pruned conv (the upper bound of what skipping can buy);
- ``gather_conv``: Gather(W, out_idx) [-> Gather(., in_idx, axis=1)] -> Conv (what the skipping
  export does);
- ``gather_matmul``: for 1x1 convs, Gather the weight rows -> MatMul on the (C, H*W) view
  (MLAS GEMM needs no prepacked weights);
- ``im2col_matmul``: for 3x3 convs, Pad -> 9 Slices -> Concat -> MatMul with the gathered,
  reshaped weight (a GEMM instead of a dynamic-weight Conv).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _graphs(c_in: int, c_out: int, hw: int, k: int, keep_out: int, keep_in: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    pad = k // 2
    x_full = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])
    x_half = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, keep_in, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    oi = helper.make_tensor_value_info("out_idx", TensorProto.INT64, [keep_out])
    ii = helper.make_tensor_value_info("in_idx", TensorProto.INT64, [keep_in])
    conv_attrs = {"kernel_shape": [k, k], "pads": [pad] * 4}

    def model(nodes, inputs, inits):
        g = helper.make_graph(nodes, "g", inputs, [y], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    out = {}
    out["dense"] = (model([helper.make_node("Conv", ["x", "W", "B"], ["y"], **conv_attrs)], [x_full],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]), "full")
    out["static_half"] = (model([helper.make_node("Conv", ["x", "W", "B"], ["y"], **conv_attrs)], [x_half],
                                [numpy_helper.from_array(w[:keep_out, :keep_in].copy(), "W"),
                                 numpy_helper.from_array(b[:keep_out].copy(), "B")]), "half")
    gnodes = [helper.make_node("Gather", ["W", "out_idx"], ["w1"], axis=0),
              helper.make_node("Gather", ["w1", "in_idx"], ["w2"], axis=1),
              helper.make_node("Gather", ["B", "out_idx"], ["b1"], axis=0)]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    out["gather_conv"] = (model(gnodes + [helper.make_node("Conv", ["x", "w2", "b1"], ["y"], **conv_attrs)],
                                [x_half, oi, ii], inits), "half")
    shape = numpy_helper.from_array(np.array([keep_in * k * k, hw * hw], np.int64), "cols_shape")
    wshape = numpy_helper.from_array(np.array([keep_out, keep_in * k * k], np.int64), "w_shape")
    oshape = numpy_helper.from_array(np.array([1, keep_out, hw, hw], np.int64), "o_shape")
    bshape = numpy_helper.from_array(np.array([keep_out, 1], np.int64), "b_shape")
    mm = [helper.make_node("Reshape", ["w2", "w_shape"], ["wm"]),
          helper.make_node("Reshape", ["b1", "b_shape"], ["bm"])]
    if k == 1:
        mm += [helper.make_node("Reshape", ["x", "cols_shape"], ["cols"])]
        extra = []
    else:
        extra = [numpy_helper.from_array(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64), "pads"),
                 numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"),
                 numpy_helper.from_array(np.array([2], np.int64), "ax2")]
        mm.append(helper.make_node("Pad", ["x", "pads"], ["xp"]))
        taps = []
        for dy in range(k):
            for dx in range(k):
                extra += [numpy_helper.from_array(np.array([dy, dx], np.int64), f"s{dy}{dx}"),
                          numpy_helper.from_array(np.array([dy + hw, dx + hw], np.int64), f"e{dy}{dx}")]
                mm.append(helper.make_node("Slice", ["xp", f"s{dy}{dx}", f"e{dy}{dx}", "axes23"], [f"t{dy}{dx}"]))
                mm.append(helper.make_node("Unsqueeze", [f"t{dy}{dx}", "ax2"], [f"u{dy}{dx}"]))
                taps.append(f"u{dy}{dx}")
        # (1, keep_in, 9, H, W): the same (c, ky, kx) order as the flattened weight
        mm.append(helper.make_node("Concat", taps, ["cat"], axis=2))
        mm.append(helper.make_node("Reshape", ["cat", "cols_shape"], ["cols"]))
    mm += [helper.make_node("MatMul", ["wm", "cols"], ["ym"]),
           helper.make_node("Add", ["ym", "bm"], ["yb"]),
           helper.make_node("Reshape", ["yb", "o_shape"], ["y"])]
    name = "gather_matmul" if k == 1 else "im2col_matmul"
    out[name] = (model(gnodes + mm, [x_half, oi, ii], inits + [shape, wshape, oshape, bshape] + extra), "half")
    onnx.checker.check_model(out[name][0])
    return out, w, b


def run(threads: int = 1, reps: int = 5) -> list[dict]:
    import onnxruntime as ort

    cases = [(16, 16, 32, 3), (64, 64, 8, 3), (128, 128, 16, 1)]
    rows = []
    for c_in, c_out, hw, k in cases:
        keep_out, keep_in = c_out // 2, c_in // 2
        graphs, w, b = _graphs(c_in, c_out, hw, k, keep_out, keep_in)
        rng = np.random.default_rng(1)
        feeds_full = {"x": rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)}
        oi = np.sort(rng.choice(c_out, keep_out, replace=False)).astype(np.int64)
        ii = np.sort(rng.choice(c_in, keep_in, replace=False)).astype(np.int64)
        xh = feeds_full["x"][:, ii].copy()
        sessions = {}
        for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED"):
            for name, (proto, kind) in graphs.items():
                so = ort.SessionOptions()
                so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
                feeds = feeds_full if kind == "full" else {"x": xh}
                if name in ("gather_conv", "gather_matmul", "im2col_matmul"):
                    feeds = {**feeds, "out_idx": oi, "in_idx": ii}
                sessions[(level, name)] = (sess, feeds)
        # correctness of the matmul forms against the gathered conv
        ref = sessions[("ORT_ENABLE_ALL", "gather_conv")][0].run(None, sessions[("ORT_ENABLE_ALL", "gather_conv")][1])[0]
        for (level, name), (sess, feeds) in sessions.items():
            got = sess.run(None, feeds)[0]
            if name.endswith("matmul"):
                assert np.abs(got - ref).max() < 1e-3, (name, np.abs(got - ref).max())
        times: dict = {key: [] for key in sessions}
        for _ in range(reps):  # interleaved rounds
            for key, (sess, feeds) in sessions.items():
                for _ in range(20):
                    sess.run(None, feeds)
                ts = []
                for _ in range(100):
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    ts.append(time.perf_counter() - t0)
                times[key].append(np.median(ts) * 1e3)
        for (level, name), vals in times.items():
            rows.append({"layer": f"{c_in}->{c_out} k{k} {hw}x{hw}", "level": level.replace("ORT_ENABLE_", ""),
                         "form": name, "ms": float(np.median(vals))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = run(args.threads)
    layer = None
    for r in rows:
        if r["layer"] != layer:
            layer = r["layer"]
            print(f"\n{layer} (half of the filters and input channels selected at run time)")
        print(f"  {r['level']:<9} {r['form']:<14} {r['ms']:.4f} ms")


if __name__ == "__main__":
    main()
