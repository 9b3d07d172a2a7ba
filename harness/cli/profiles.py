"""``qae profiles list|show``, ``qae predict`` and ``qae calibrate``: hardware profiles and the cost model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.cli.common import (
    add_calib,
    add_data,
    add_data_options,
    add_genome,
    add_input_shape,
    add_json,
    add_model,
    data_options,
    parse_shapes,
    print_notes,
)
from harness.core.errors import InputError

#: candidates of one ``--model`` a calibration may fit: a suite stays a calibration, not hours of measuring
MAX_MODEL_CANDIDATES = 40


def register(sub: Any) -> None:
    p = sub.add_parser("profiles", help="list or show hardware profiles")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION")
    psub.required = True
    q = psub.add_parser("list", help="the shipped and calibrated profiles")
    q.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    q.set_defaults(func=cmd_list)
    q = psub.add_parser("show", help="one profile, every number with its source")
    q.add_argument("name", help="profile name or .yaml path")
    q.add_argument("--json", action="store_true", help="print the profile as JSON")
    q.set_defaults(func=cmd_show)

    p = sub.add_parser("predict", help="predicted latency, energy and memory of a model on a profile")
    add_model(p)
    p.add_argument("--profile", required=True, help="profile name or .yaml path")
    add_genome(p, help="genome file (YAML or JSON); default: every layer w8a8")
    add_input_shape(p)
    add_calib(p, "data (.npz) whose first inference sets the input shapes --input-shape leaves open")
    add_data(p)
    add_data_options(p, scoring=False)  # the layout shapes the data's first inference
    add_json(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit a profile to measurements from a device")
    p.add_argument("--device", default="local", help="device name from devices.yaml (default: local)")
    p.add_argument("--profile", default=None,
                   help="base profile to start from (default: host-cpu, litert-xnnpack with --runtime litert)")
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default="onnxruntime",
                   help="the runtime whose models are measured: onnxruntime (default) or litert (.tflite micro-"
                        "benchmarks and digits-vit / digits-cnn candidates built by ai-edge-quantizer)")
    p.add_argument("-o", "--output", help="calibrated profile to write (default: profiles/calibrated/DEVICE.yaml)")
    p.add_argument("--quick", action="store_true", help="a 7-model suite that checks the set-up in seconds")
    p.add_argument("--runs", type=int, default=50, help="minimum timed runs per model (default 50)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds per model (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while measuring (default 1)")
    p.add_argument("--passes", type=int, default=2, help="interleaved passes over the suite (default 2)")
    p.add_argument("--max-passes", type=int, default=None,
                   help="more interleaved passes, up to this many, for models whose passes differ by more than "
                        "--spread (default: --passes + 2)")
    p.add_argument("--spread", type=float, default=0.05,
                   help="largest accepted difference between a model's passes, as a fraction (default 0.05)")
    p.add_argument("--drift", type=float, default=None, metavar="FRACTION",
                   help="how far a stored model measured again may move before every stored measurement is "
                        "taken again, so that one fit never mixes two states of the device (default 0.05)")
    p.add_argument("--model", action="append", default=[], metavar="builtin:NAME|FILE.onnx",
                   help="also fit --model-candidates candidates of this model (its float, w8a8 and dynamic int8 "
                        "builds and random mixes): the fit sees the shapes and ops your search will run; repeatable")
    p.add_argument("--model-candidates", type=int, default=None, metavar="N",
                   help="candidates of each --model fitted (default 14: the three builds and eleven mixes; the "
                        "mixes teach the fit how the model's layers run beside each other, at one measurement each per "
                        "pass)")
    p.add_argument("--calib", help="calibration data (.npz) for a --model FILE.onnx")
    p.add_argument("--no-profile-ops", dest="profile_ops", action="store_false",
                   help="skip the per-op profiles: fit whole-model latencies only (faster, no per-layer table)")
    p.add_argument("--statistic", choices=["min", "p50"], default="min",
                   help="latency statistic fitted: min (robust on a shared host, default) or p50")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_calibrate)


def cmd_list(args: argparse.Namespace) -> int:
    from profiles import list_profiles

    rows = list_profiles()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hardware profiles")
    for col in ("name", "kind", "kernels", "description"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["kind"], ", ".join(row["kernels"]), row["description"])
    Console().print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from profiles import load_profile

    profile = load_profile(args.name)
    if args.json:
        print(json.dumps(profile.data, indent=1))
    else:
        print(f"# {profile.path}")
        print(yaml.safe_dump(profile.data, sort_keys=False, width=120), end="")
    return 0


def _error_text(pred: Any) -> str:
    """The energy line's error: its own (a calibrated profile's energy keeps its base profile's error)."""
    other = pred.energy_memory_uncertainty
    if other is None:
        return "(error not known: energy is not calibrated and the base profile is not installed)"
    if other == pred.uncertainty:
        return f"+- {other * 100:.0f} %"
    return f"+- {other * 100:.0f} % (energy not calibrated: the base profile's estimates)"


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.core.genome import Gene, Genome
    from harness.run.shapes import resolve_shapes
    from profiles import load_profile
    from profiles.costmodel import predict_model

    profile = load_profile(args.profile)
    if str(args.model).lower().endswith(".tflite"):
        shaped: Any = _LiteShapes(args.model, parse_shapes(args.input_shape))
    else:
        shaped = resolve_shapes(args.model, parse_shapes(args.input_shape), args.calib or args.data,
                                data_options(args))
    model = shaped.model
    print_notes(model)
    ops = {layer.name: layer.op_type for layer in model.layers}
    genome = Genome.load(args.genome, ops) if args.genome else Genome.uniform(Gene(8, 8), ops)
    pred = predict_model(model, genome, profile)
    out = pred.to_dict()
    out["model"] = args.model
    out["input_shapes"] = shaped.table()
    out["genome_hash"] = genome.hash
    out["budgets"] = profile.budgets
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.console import Console
    from rich.table import Table

    cal = f"calibration {pred.calibration_id}" if pred.calibration_id else "uncalibrated"
    table = Table(title=f"predicted on {profile.name} ({cal}), genome {genome.hash}",
                  caption="; ".join(shaped.lines()))
    width = max((len(row["layer"]) for row in pred.layers), default=5)
    table.add_column("layer", no_wrap=True, min_width=width)  # names are what users grep for: never cut
    for col in ("op", "w", "a", "path", "compute", "MACs", "latency us", "energy uJ"):
        table.add_column(col, justify="right" if col in ("MACs", "latency us", "energy uJ") else "left")
    for row in pred.layers:
        table.add_row(row["layer"], row["op_type"], str(row["weight_bits"]), str(row["activation_bits"]),
                      row["path"], row["compute"], f"{row['macs']:,}", f"{row['latency_ms'] * 1e3:.2f}",
                      f"{row['energy_j'] * 1e6:.3f}")
    console = Console()
    console.print(table)
    unc = pred.uncertainty * 100
    lines = [
        f"latency (predicted): {pred.latency_ms:.4g} ms +- {unc:.0f} %",
        f"energy (predicted): {pred.energy_j * 1e3:.4g} mJ {_error_text(pred)}",
        f"peak memory (predicted): {pred.memory_bytes / 1e6:.4g} MB",
    ]
    for key, unit, scale, val in (("latency_ms", "ms", 1.0, pred.latency_ms), ("energy_j", "mJ", 1e3, pred.energy_j),
                                  ("memory_bytes", "MB", 1e-6, pred.memory_bytes)):
        if key in profile.budgets:
            budget = profile.budgets[key]
            verdict = "within" if val <= budget else "OVER"
            lines.append(f"budget {key}: {budget * scale:.4g} {unit} ({verdict})")
    if pred.emulated_layers:
        lines.append("emulated widths are costed at their int8 storage: " + ", ".join(pred.emulated_layers))
    console.print("\n".join(lines))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import DEFAULT_MODEL_CANDIDATES, DRIFT_BOUND, default_suite, run

    if args.model_candidates is None:
        args.model_candidates = DEFAULT_MODEL_CANDIDATES
    if args.runs < 1 or args.min_seconds < 0 or args.threads < 1 or args.passes < 1:
        raise InputError("--runs, --threads and --passes must be >= 1 and --min-seconds >= 0")
    if args.max_passes is not None and args.max_passes < args.passes:
        raise InputError(f"--max-passes {args.max_passes} is below --passes {args.passes}: give at least --passes")
    if not 0 < args.spread < 1:
        raise InputError(f"--spread {args.spread}: give a fraction between 0 and 1, such as 0.05")
    if args.drift is None:
        args.drift = DRIFT_BOUND
    if not 0 < args.drift < 1:
        raise InputError(f"--drift {args.drift}: give a fraction between 0 and 1, such as {DRIFT_BOUND}")
    if not 3 <= args.model_candidates <= MAX_MODEL_CANDIDATES:
        raise InputError(f"--model-candidates {args.model_candidates}: give 3 (the float, w8a8 and dynamic int8 "
                         f"builds) to {MAX_MODEL_CANDIDATES}")
    output = Path(args.output) if args.output else Path("profiles/calibrated") / f"{args.device}.yaml"
    if output.suffix not in (".yaml", ".yml"):
        raise InputError(f"-o {output}: a calibrated profile is a .yaml file")
    settings = MeasureSettings(runs=args.runs, min_seconds=args.min_seconds, warmup_runs=1,
                               warmup_seconds=min(0.5, args.min_seconds), timeout_s=120, threads=args.threads,
                               profile_ops=args.profile_ops)
    if args.profile is None:
        args.profile = "litert-xnnpack" if args.runtime == "litert" else "host-cpu"
    if args.runtime == "litert":
        from harness.run.calibrate_litert import litert_suite

        if args.model or args.calib:
            raise InputError("--model and --calib add ONNX candidates: a LiteRT calibration measures its own suite")
        report = run(args.device, args.profile, output, suite=litert_suite(quick=args.quick), settings=settings,
                     progress=sys.stderr.isatty() and not args.json, passes=args.passes, statistic=args.statistic,
                     max_passes=args.max_passes, spread=args.spread, drift=args.drift)
        return _calibrated(args, output, report)
    files = [m for m in args.model if not m.startswith("builtin:")]
    if any(not m.endswith(".onnx") for m in files):
        raise InputError(f"--model {files[0]}: give builtin:NAME or an .onnx file")
    if len(files) > 1 or (files and not args.calib) or (args.calib and not files):
        raise InputError("--calib goes with exactly one --model FILE.onnx (its calibration inputs, .npz)")
    missing = [m for m in files + ([args.calib] if args.calib else []) if not Path(m).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such file")
    suite = default_suite(quick=args.quick, models=args.model, model_candidates=args.model_candidates)
    if files:
        suite.model_calib[files[0]] = args.calib
    report = run(args.device, args.profile, output, suite=suite, settings=settings,
                 progress=sys.stderr.isatty() and not args.json, passes=args.passes, statistic=args.statistic,
                 max_passes=args.max_passes, spread=args.spread, drift=args.drift)
    return _calibrated(args, output, report)


def _calibrated(args: argparse.Namespace, output: Path, report: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps({k: v for k, v in report.items()}, default=str))
        return 0
    print(f"wrote {output} ({report['measured']} measurements now, {report['reused']} reused from "
          f"{report['measurements']}, {len(report['failed'])} models failed)", file=sys.stderr)
    print(fidelity_text(report))
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f} %"


def _tau(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def fidelity_text(report: dict[str, Any]) -> str:
    """The fidelity tables of a calibration: whole models per workload (fit and held out), per-layer
    time per op type and path, and the noise verdict."""
    lines = ["whole models          role     n   within +-10 %   MAPE    bias    Kendall tau"]
    for role in ("heldout", "fit"):
        block = report[role]
        for workload, s in sorted(block.get("by_workload", {}).items()):
            lines.append(f"  {workload:20s} {role:8s} {s['n']:3d}   {_pct(s['within_10pct']):>11s}  "
                         f"{_pct(s['mape']):>7s} {_pct(s['bias']):>7s}   {_tau(s['kendall_tau']):>5s}")
        if block["n"]:
            lines.append(f"  {'all':20s} {role:8s} {block['n']:3d}   {_pct(block['within_10pct']):>11s}  "
                         f"{_pct(block['mape']):>7s} {_pct(block['bias']):>7s}")
    layers = report.get("layers") or {}
    kinds = {k for role in ("fit", "heldout") for k in (layers.get(role) or {}).get("by_kind", {})}
    if kinds:
        lines.append("per-layer time by op type and path (bias > 0: predicted too slow)")
        lines.append(f"  {'kind':42s} {'n fit':>5s} {'MAPE fit':>9s} {'n held':>6s} {'MAPE held':>9s} "
                     f"{'bias held':>9s} {'median ms':>9s}")
        for k in sorted(kinds):
            f = layers["fit"]["by_kind"].get(k, {"n": 0, "mape": None})
            h = layers["heldout"]["by_kind"].get(k, {"n": 0, "mape": None, "bias": None})
            med = (h if h["n"] else f).get("measured_ms")
            lines.append(f"  {k:42s} {f['n']:5d} {_pct(f['mape']):>9s} {h['n']:6d} {_pct(h['mape']):>9s} "
                         f"{_pct(h.get('bias')):>9s} {med if med is None else f'{med:.3f}':>9}")
    if layers.get("unsplit"):
        lines.append(f"  no per-layer split for: {', '.join(layers['unsplit'])}")
    noise = report.get("noise") or {}
    if noise:
        beyond = noise.get("beyond_bound") or []
        lines.append(f"noise: {noise.get('verdict')}; median spread between passes {_pct(noise.get('spread_median'))}, "
                     f"{len(beyond)} model(s) still beyond {_pct(noise.get('spread_bound'))}"
                     + (f" ({', '.join(beyond[:6])}{'...' if len(beyond) > 6 else ''})" if beyond else ""))
    drift = report.get("drift") or {}
    if drift.get("checked"):
        ratio = drift.get("ratio")
        moved = "moved" if drift.get("moved") else "held"
        worst = drift.get("worst")
        ratios = drift.get("ratios") or {}
        farthest = f", farthest {worst} at {ratios[worst]:.2f}x" if worst in ratios else ""
        lines.append(f"stored measurements: {len(drift.get('anchors') or [])} re-measured at "
                     f"{'no result' if ratio is None else f'{ratio:.2f}x'} their stored latency (median{farthest}; "
                     f"{moved}, bound {_pct(drift.get('bound'))} on each): "
                     + ("all models measured again" if drift.get("moved") else f"{drift.get('stored')} reused"))
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)


class _LiteShapes:
    """A .tflite's shapes for ``qae predict``: the file's own, resized by ``--input-shape``."""

    def __init__(self, path: str, given: dict[str, list[int]]) -> None:
        from harness.quant.litert_workload import load_lite_model

        self.model = load_lite_model(path, given or None)
        self.given = given

    def table(self) -> dict[str, dict[str, Any]]:
        return {k: {"shape": v, "source": "flag" if k in self.given else "model"}
                for k, v in self.model.shapes_used.items()}

    def lines(self) -> list[str]:
        return [f"input {k}: {'x'.join(map(str, v['shape']))} (from the {v['source']})"
                for k, v in self.table().items()]
