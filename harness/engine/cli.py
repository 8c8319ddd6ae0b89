"""Command line: a thin shell over the Python API (harness.engine: sweep, plan, report, bench,
inspect, predict). Every user error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from harness.errors import UserError, first_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UserError(f"{self.prog}: {message}")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _sweep_args(sub: Any, name: str = "sweep",
                help: str = "compress, deploy and measure: model x method x budget x target") -> Any:
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", type=Path, help="TOML file with SweepConfig fields; flags override it")
    p.add_argument("--models", help="comma list (default resnet20)")
    p.add_argument("--methods", help="comma list (default: every registered method; 'none' always runs)")
    p.add_argument("--budgets", action="append", default=[], metavar="METHOD:KNOB=V1,V2",
                   help="knob values per method (repeatable; KNOB=V1,V2 alone when one method is named)")
    p.add_argument("--targets", help="comma list (default: every available CPU target that is not opt-in; see `ls targets`)")
    p.add_argument("--data", help="digits (default) | fashion-mnist[:PATH] | cifar10:PATH | imagefolder:PATH | synthetic[:N]")
    p.add_argument("--preset", choices=None, help="quick | standard (default) | publication")
    p.add_argument("--scenarios", help="comma list of SingleStream,Offline (default both)")
    p.add_argument("--out", type=Path, help="output directory (default results/default)")
    p.add_argument("--threads", type=int, help="threads for every runtime (default: CPUs available)")
    p.add_argument("--offline-batch", type=int, help="batch size of the Offline scenario (default 64)")
    p.add_argument("--checkpoint", type=Path, help="baseline weights (a state_dict file) instead of training")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N test samples only")
    p.add_argument("--target-option", action="append", default=[], metavar="TARGET.OPTION=VALUE",
                   help="a target build option, e.g. ov-cpu.precision=bf16 or ort-cpu.graph_optimization="
                        "extended (repeatable; recorded in every row and in the cell key)")
    p.add_argument("--train-limit", type=int, help="train on a fixed class-stratified subset of N training images")
    p.add_argument("--executor", help="local (default: cells in child processes) | inline (no child processes) | "
                                      "ray[:ADDRESS] (ray:auto, ray:HOST:PORT; none: a local Ray on 127.0.0.1)")
    p.add_argument("--artifacts", type=Path, help="artifact location every node can read (default OUT/artifacts)")
    p.add_argument("--append", action="store_true", help="add rows of other data/models to an existing out directory")
    p.add_argument("--dry-run", action="store_true", help="print the plan (jobs, what is done, time left) and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _build_parser() -> _Parser:
    parser = _Parser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _sweep_args(sub)
    plan = _sweep_args(sub, name="plan", help="print a sweep's plan (same options as sweep) and stop")
    plan.set_defaults(dry_run=True)
    r = sub.add_parser("report", help="rebuild results.csv, results.md, pareto.png and report.md (with its figures) from DIR's store")
    r.add_argument("dir", type=Path)
    b = sub.add_parser("bench", help="time an existing ONNX model on targets with the same engine")
    b.add_argument("onnx", type=Path)
    b.add_argument("--targets", default="ort-cpu")
    b.add_argument("--preset", default="quick")
    b.add_argument("--input-shape", default="1,3,32,32", help="N,C,H,W; N is the batch")
    b.add_argument("--threads", type=int)
    b.add_argument("--json", action="store_true")
    pr = sub.add_parser("predict", help="predicted p50 of compressed networks on targets, before any training")
    pr.add_argument("--model", "--models", dest="models", required=True, help="comma list of models")
    pr.add_argument("--methods", help="comma list (default: none, the dense network only)")
    pr.add_argument("--budgets", action="append", default=[], metavar="METHOD:KNOB=V1,V2",
                    help="knob values per method, as for sweep (repeatable)")
    pr.add_argument("--targets", default="ort-cpu", help="comma list (default ort-cpu)")
    pr.add_argument("--scenarios", default="SingleStream", help="comma list of SingleStream,Offline")
    pr.add_argument("--threads", type=int, help="threads for every runtime (default: CPUs available)")
    pr.add_argument("--offline-batch", type=int, default=64)
    pr.add_argument("--preset", default="quick", help="whose default knob values (quick | standard | publication)")
    pr.add_argument("--json", action="store_true")
    i = sub.add_parser("inspect", help="MACs, params and size of a dense or compressed model")
    i.add_argument("--model", required=True)
    i.add_argument("--method")
    i.add_argument("--budget", action="append", default=[], metavar="KNOB=V")
    i.add_argument("--json", action="store_true")
    from targets.tvm_board import add_board_parser  # no tvm import: the board code imports it when run

    add_board_parser(sub)
    ls = sub.add_parser("ls", help="list registered methods, targets or models")
    ls.add_argument("what", nargs="?", choices=["methods", "targets", "models"], default=None)
    return parser


def _target_options(items: list[str], base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in base.items()}
    for item in items:
        head, eq, value = item.partition("=")
        target, dot, option = head.rpartition(".")
        if not (eq and dot and target and option):
            raise UserError(f"--target-option {item!r} is not TARGET.OPTION=VALUE")
        out.setdefault(target, {})[option] = value
    return out


def _config(args: argparse.Namespace) -> Any:
    from harness.engine.config import SweepConfig, load_toml, parse_budget_args

    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {"models": _csv(args.models), "methods": _csv(args.methods), "targets": _csv(args.targets),
             "data": args.data, "preset": args.preset, "scenarios": _csv(args.scenarios), "out": args.out,
             "threads": args.threads, "offline_batch": args.offline_batch, "checkpoint": args.checkpoint,
             "seed": args.seed, "eval_limit": args.eval_limit, "train_limit": args.train_limit,
             "executor": args.executor, "artifacts": args.artifacts}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.budgets:
        values["budgets"] = {**values.get("budgets", {}), **parse_budget_args(args.budgets, values.get("methods"))}
    if args.target_option:
        values["target_options"] = _target_options(args.target_option, values.get("target_options", {}))
    if args.no_progress:
        values["progress"] = False
    if args.append:
        values["append"] = True
    values["command"] = getattr(args, "command_line", "")
    return SweepConfig(**values)


def summary_line(rows: list[dict[str, Any]]) -> str:
    """``N rows: a ok, b skipped, c errors, d timeouts, e noisy timings re-measured, f still noisy,
    g speed-ups withheld`` (noisy: the row's own latency; withheld: its paired ratio)."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "error", "timeout")}
    ok = [r for r in rows if r.get("status") == "ok"]
    retimed = sum((r.get("timing_tries") or 1) > 1 for r in ok)
    noisy = sum(r.get("timing_ok") is False for r in ok)
    withheld = sum(r.get("ratio_ok") is False for r in ok)
    return (f"{len(rows)} rows: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} errors, "
            f"{counts['timeout']} timeouts, {retimed} noisy timings re-measured, {noisy} still noisy, "
            f"{withheld} speed-ups withheld")


def _resume_hint(argv: Sequence[str] | None) -> str:
    words = list(argv) if argv is not None else sys.argv[1:]
    return "python -m harness " + " ".join(words)


def _sweep(args: argparse.Namespace) -> int:
    from harness.engine.sweep import dry_run, run_sweep

    config = _config(args)
    if args.dry_run:
        print("\n".join(dry_run(config)))
        return 0
    rows = run_sweep(config)
    print(f"{summary_line(rows)} in {config.out}: results.csv, results.md, pareto.png, report.md")
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.engine.report import publish
    from harness.engine.store import Store

    db = args.dir / "results.sqlite"
    if not db.is_file():
        raise UserError(f"no results store in {args.dir} (expected {db})")
    store = Store(db)
    paths = publish(args.dir, store.rows())
    store.close()
    print(" ".join(str(p) for p in paths.values()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from harness.engine.bench import bench_onnx, format_table

    rows = bench_onnx(args.onnx, _csv(args.targets) or [], preset=args.preset,
                      input_shape=args.input_shape, threads=args.threads)
    print(json.dumps(rows, indent=1, default=str) if args.json else format_table(rows))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _predict(args: argparse.Namespace) -> int:
    from harness.engine.config import parse_budget_args
    from harness.engine.predict import format_rows, predict

    methods = _csv(args.methods)
    budgets = parse_budget_args(args.budgets, methods) if args.budgets else {}
    rows = predict(_csv(args.models) or [], methods, budgets, _csv(args.targets), _csv(args.scenarios),
                   threads=args.threads, offline_batch=args.offline_batch, preset=args.preset,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(rows, indent=1, default=str) if args.json else format_rows(rows))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from harness.engine.inspection import inspect_model

    info = inspect_model(args.model, args.method, args.budget)
    print(json.dumps(info, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _ls(args: argparse.Namespace) -> int:
    from harness.engine.inspection import listing

    print(listing(args.what))
    return 0


def _board(args: argparse.Namespace) -> int:
    from targets.tvm_board import board_command

    return board_command(args)


COMMANDS = {"board": _board, "sweep": _sweep, "plan": _sweep, "report": _report, "bench": _bench, "inspect": _inspect,
            "predict": _predict, "ls": _ls}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; user errors are one line on stderr with exit status 2."""
    try:
        args = _build_parser().parse_args(argv)
        args.command_line = _resume_hint(argv)  # written into every row and results.md
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: every row written so far is kept in the results store (results.csv/md rebuilt "
              f"for them); to resume, run the same command again: {_resume_hint(argv)}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {first_line(exc)} "
              "(set HARNESS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
