"""``qae layers``, ``qae quantize`` and ``qae evaluate``: one model, one genome, exact numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import add_calib, add_data, add_genome, add_input_shape, add_json, add_model, parse_shapes
from harness.core.model import load_model


def register(sub: Any) -> None:
    p = sub.add_parser("layers", help="list the quantizable layers of a model")
    add_model(p)
    add_input_shape(p)
    add_json(p, "print one JSON list on stdout")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("quantize", help="build the quantized model a genome describes")
    add_model(p)
    add_genome(p, required=True)
    add_calib(p)
    p.add_argument("--method", default="minmax", help="calibration method: minmax, entropy, percentile")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized .onnx")
    add_json(p, "print a JSON summary on stdout")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy and exact size of a model on a data set")
    add_model(p)
    add_data(p)
    p.add_argument("--reference", help="FP32 model to measure agreement against")
    p.add_argument(
        "--metric",
        default="auto",
        choices=["auto", "classification", "agreement", "embedding"],
        help="auto: a builtin's own metric, else top-1 with labels, else agreement with --reference; "
        "embedding: mean-pooled token embeddings, top-1 retrieval agreement and mean cosine",
    )
    add_json(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_layers(args: argparse.Namespace) -> int:
    model = load_model(args.model, parse_shapes(args.input_shape))
    if args.json:
        print(json.dumps([layer.to_dict() for layer in model.layers], indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(model.layers)} quantizable layers of {args.model}")
    for col in ("layer", "op", "weight shape", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for layer in model.layers:
        table.add_row(
            layer.name, layer.op_type, "x".join(map(str, layer.weight_shape)), f"{layer.params:,}", f"{layer.macs:,}"
        )
    table.add_row(
        "total",
        "",
        "",
        f"{sum(lay.params for lay in model.layers):,}",
        f"{sum(lay.macs for lay in model.layers):,}",
        style="bold",
    )
    Console().print(table)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from harness.quant.workload import Workload

    work = Workload.open(args.model, calib=args.calib, method=args.method)
    genome = work.load_genome(args.genome)
    result = work.build(genome)
    out = Path(args.output)
    from harness.quant.quantize import save_model

    save_model(result, out)
    summary = {
        "output": str(out),
        "genome_hash": genome.hash,
        "file_bytes": out.stat().st_size,
        "emulated": result.emulated,
        "emulated_layers": result.emulated_layers,
        "calibration_cached": work.ranges_from_cache,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        note = f", emulated layers: {', '.join(result.emulated_layers)}" if result.emulated else ""
        print(f"wrote {out} ({summary['file_bytes']:,} bytes, genome {genome.hash}{note})", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.quant.workload import evaluate_file

    report = evaluate_file(args.model, data=args.data, reference=args.reference, metric=args.metric)
    if args.json:
        print(json.dumps(report))
        return 0
    acc_name = {
        "top1": "top-1 accuracy",
        "retrieval_top1_agreement": "top-1 retrieval agreement with the reference",
    }.get(report["metric"], "top-1 agreement with the reference")
    lines = [f"{acc_name}: {report['accuracy'] * 100:.2f} % on {report['n']} samples"]
    if report.get("mean_cosine") is not None:
        lines.append(f"mean cosine to the reference: {report['mean_cosine']:.5f}")
    lines.append(f"file: {report['file_bytes']:,} bytes; weights at nominal width: {report['weight_bytes']:,} bytes")
    if report["emulated"]:
        lines.append(f"emulated widths (accuracy exact, size nominal): {', '.join(report['emulated_layers'])}")
    print("\n".join(lines))
    return 0
