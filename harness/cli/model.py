"""``qae layers``, ``qae quantize`` and ``qae evaluate``: one model, one genome, exact numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import (
    add_calib,
    add_data,
    add_data_options,
    add_genome,
    add_input_shape,
    add_json,
    add_model,
    add_runtime,
    data_options,
    loads_or_removed,
    model_spec,
    parse_shapes,
    print_notes,
)
from harness.core.genome import layer_kernels
from harness.core.model import ModelInfo, TensorSpec, load_model


def register(sub: Any) -> None:
    p = sub.add_parser("layers", help="list the quantizable layers of a model")
    add_model(p, optional=True)
    add_runtime(p)
    add_calib(p, "data whose first inference sets the shapes of symbolic inputs (the MACs); with --torch: the data "
                 "whose first sample traces the module")
    add_input_shape(p)
    add_json(p, "print one JSON list on stdout")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("quantize", help="build the quantized model a genome describes")
    add_model(p, optional=True)
    add_runtime(p)
    add_genome(p, required=True)
    add_calib(p)
    p.add_argument("--method", default="minmax", help="calibration method: minmax, entropy, percentile")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized .onnx (.tflite on LiteRT)")
    add_data_options(p, scoring=False)
    add_json(p, "print a JSON summary on stdout")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy and exact size of a model on a data set")
    add_model(p)
    add_data(p)
    p.add_argument("--reference", help="FP32 model to score the outputs against (agreement, SQNR, cosine)")
    add_data_options(p)
    add_json(p)
    p.set_defaults(func=cmd_evaluate)


def _spec(args: argparse.Namespace) -> str:
    from harness.core.errors import InputError

    spec = model_spec(args)
    if not spec:
        raise InputError("give a MODEL (an .onnx or .tflite file, or builtin:NAME), or --runtime litert --torch M:F")
    return spec


def cmd_layers(args: argparse.Namespace) -> int:
    from harness.quant.litert_workload import load_lite_model, wants_litert

    spec = _spec(args)
    if wants_litert(spec, args.runtime):
        model: ModelInfo = load_lite_model(spec, parse_shapes(args.input_shape), args.calib)
    elif args.calib:  # its first inference sets the shapes --input-shape leaves open, as predict and search do
        from harness.run.shapes import resolve_shapes

        model = resolve_shapes(spec, parse_shapes(args.input_shape), args.calib, require=False).model
    else:
        model = load_model(spec, parse_shapes(args.input_shape))
    print_notes(model)
    if any(layer.macs is None for layer in model.layers):
        print(f"qae: {_unresolved_line(model)}", file=sys.stderr)
    def kernels(layer: Any) -> tuple[str, ...]:
        # a LiteRT layer runs as its TFLite op (node_name is ``OP:index``); an ONNX one as its kernels
        return (layer.node_name.split(":", 1)[0],) if getattr(model, "runtime", "") == "litert" \
            else layer_kernels(layer.op_type)

    if args.json:
        print(json.dumps([{**layer.to_dict(), "kernels": list(kernels(layer))} for layer in model.layers], indent=1))
        return 0
    header = ("layer", "op", "kernels", "weight shape", "params", "MACs")
    rows = [
        (layer.name, layer.op_type, ", ".join(kernels(layer)), "x".join(map(str, layer.weight_shape)),
         f"{layer.params:,}", _macs(layer.macs))
        for layer in model.layers
    ]
    macs = [layer.macs for layer in model.layers]
    total = ("total", "", "", "", f"{sum(lay.params for lay in model.layers):,}",
             "?" if None in macs else f"{sum(m or 0 for m in macs):,}")
    title = f"{len(model.layers)} quantizable layers of {args.model}"
    if not sys.stdout.isatty():
        # Piped or redirected: plain columns at full width, so every layer name is whole.
        print(_plain_table(title, header, [*rows, total]))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Lines between rows once names fold over several lines, so each row reads as one layer.
    table = Table(title=title, show_lines=max((len(r[0]) for r in rows), default=0) > 40)
    for col in header:
        # Long names fold onto the next line rather than end in "…": two layers never read the same.
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    table.add_row(*total, style="bold")
    Console().print(table)
    return 0


def _macs(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _plain_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {len(header) - 2, len(header) - 1}  # params, MACs

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([title, line(header), *(line(r) for r in rows)])


def _unresolved_line(model: ModelInfo) -> str:
    """One line: which inputs need ``--input-shape`` for the MACs shown as "?"."""
    missing = [spec for spec in model.inputs if spec.name in model.unresolved_inputs()]
    if not missing:
        return "MACs marked ? could not be resolved from the model's shapes: give --input-shape for its inputs"
    def example(spec: TensorSpec) -> str:
        if not spec.rank_known:
            return f"--input-shape {spec.name}=D1xD2x..."
        symbols = spec.symbols or ("",) * len(spec.shape)
        dims = [
            str(d) if d is not None else f"<{sym or f'D{axis}'}>"
            for axis, (d, sym) in enumerate(zip(spec.shape, symbols))
        ]
        return f"--input-shape {spec.name}=" + "x".join(dims)

    flags = " ".join(example(spec) for spec in missing)
    names = ", ".join(f"{spec.name!r} {spec.declared()}" for spec in missing)
    return f"MACs marked ? need the shape of one inference of input {names}: give {flags} (numbers for the <...>)"


def cmd_quantize(args: argparse.Namespace) -> int:
    from harness.quant.litert_workload import open_workload

    work = open_workload(_spec(args), args.runtime, calib=args.calib, method=args.method,
                         options=data_options(args))
    print_notes(work.model)
    genome = work.load_genome(args.genome)
    result = work.build(genome)
    out = Path(args.output)
    from harness.quant.quantize import save_model

    save_model(result, out)
    if getattr(work, "runtime", "onnxruntime") == "onnxruntime":
        loads_or_removed(out)
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

    if str(args.model).lower().endswith(".tflite"):
        from harness.quant.litert_workload import evaluate_lite_file

        report = evaluate_lite_file(args.model, args.data, args.reference, data_options(args))
    else:
        report = evaluate_file(args.model, data=args.data, reference=args.reference, options=data_options(args))
    if args.json:
        print(json.dumps(report))
        return 0
    lines = [report["metric_note"]]
    lines.append(f"{_metric_label(report['metric'])}: {_score(report['metric'], report['accuracy'])} "
                 f"on {report['n']} samples")
    scores: dict[str, dict[str, float]] = report.get("scores") or {}
    columns = list(dict.fromkeys(key for row in scores.values() for key in row))
    if scores and columns:
        rows = [("output", *columns)] + [
            (name, *(_score(k, row[k]) if k in row else "" for k in columns)) for name, row in scores.items()
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
    if report.get("mean_cosine") is not None:
        lines.append(f"mean cosine to the reference: {report['mean_cosine']:.5f}")
    lines.append(f"file: {report['file_bytes']:,} bytes; weights at nominal width: {report['weight_bytes']:,} bytes")
    if report["emulated"]:
        lines.append(f"emulated widths (accuracy exact, size nominal): {', '.join(report['emulated_layers'])}")
    print("\n".join(lines))
    return 0


_LABELS = {
    "top1": "top-1 accuracy",
    "top1_agreement": "top-1 agreement with the reference",
    "retrieval_top1_agreement": "top-1 retrieval agreement with the reference",
    "cosine": "cosine to the reference (whole output)",
    "sqnr": "SQNR against the reference",
    "neg_mse": "-MSE against the reference (higher is better)",
    "neg_max_abs": "-max |error| against the reference (higher is better)",
}


def _metric_label(key: str) -> str:
    return _LABELS.get(key, f"{key} (user metric, higher is better)")


def _score(key: str, value: float) -> str:
    if key in ("top1", "top1_agreement", "retrieval_top1_agreement"):
        return f"{value * 100:.2f} %"
    if key == "sqnr":
        return f"{value:.2f} dB"
    if key in ("cosine", "mean_cosine"):
        return f"{value:.5f}"
    return f"{value:.6g}"
