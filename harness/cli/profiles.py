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
    p.add_argument("--profile", default="host-cpu", help="base profile to start from (default: host-cpu)")
    p.add_argument("-o", "--output", help="calibrated profile to write (default: profiles/calibrated/DEVICE.yaml)")
    p.add_argument("--quick", action="store_true", help="a 7-model suite that checks the set-up in seconds")
    p.add_argument("--runs", type=int, default=50, help="minimum timed runs per model (default 50)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds per model (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while measuring (default 1)")
    p.add_argument("--passes", type=int, default=2, help="interleaved passes over the suite (default 2)")
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


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.core.genome import Gene, Genome
    from harness.run.shapes import resolve_shapes
    from profiles import load_profile
    from profiles.costmodel import predict_model

    profile = load_profile(args.profile)
    shaped = resolve_shapes(args.model, parse_shapes(args.input_shape), args.calib or args.data, data_options(args))
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
        f"energy (predicted): {pred.energy_j * 1e3:.4g} mJ +- {unc:.0f} %",
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
    from harness.run.calibrate import default_suite, run

    if args.runs < 1 or args.min_seconds < 0 or args.threads < 1 or args.passes < 1:
        raise InputError("--runs, --threads and --passes must be >= 1 and --min-seconds >= 0")
    output = Path(args.output) if args.output else Path("profiles/calibrated") / f"{args.device}.yaml"
    if output.suffix not in (".yaml", ".yml"):
        raise InputError(f"-o {output}: a calibrated profile is a .yaml file")
    settings = MeasureSettings(runs=args.runs, min_seconds=args.min_seconds, warmup_runs=1,
                               warmup_seconds=min(0.5, args.min_seconds), timeout_s=120, threads=args.threads)
    report = run(args.device, args.profile, output, suite=default_suite(quick=args.quick), settings=settings,
                 progress=sys.stderr.isatty() and not args.json, passes=args.passes, statistic=args.statistic)
    if args.json:
        print(json.dumps({k: v for k, v in report.items()}, default=str))
        return 0
    held = report["heldout"]
    print(f"wrote {output} ({report['measured']} models measured, {report['reused']} reused from "
          f"{report['measurements']}, {len(report['failed'])} failed)", file=sys.stderr)
    if held["n"]:
        for workload, s in sorted(held["by_workload"].items()):
            print(f"held-out {workload}: {s['within_10pct'] * 100:.0f} % within +-10 %, MAPE {s['mape'] * 100:.1f} % "
                  f"(n={s['n']})")
        print(f"held-out all: {held['within_10pct'] * 100:.0f} % within +-10 %, MAPE {held['mape'] * 100:.1f} % "
              f"(n={held['n']})")
    return 0
