"""``qae devices list``, ``qae devices check`` and ``qae measure``: the hardware in the loop."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.cli.common import (
    add_calib,
    add_data,
    add_data_options,
    add_devices_file,
    add_genome,
    add_input_shape,
    add_json,
    add_model,
    data_options,
    parse_shapes,
)
from harness.core.errors import InputError
from harness.core.latency_stats import MEDIAN_CI_METHOD, Spread, median_ci, replicability
from harness.devices.config import DeviceConfig, get_device, load_devices
from harness.devices.connect import connect
from harness.devices.pool import QUARANTINED, HealthStore, measure_with_retries
from harness.devices.transport import DeviceError, MeasureRecord, MeasureSettings


def register(sub: Any) -> None:
    p = sub.add_parser("devices", help="list and check the devices in devices.yaml")
    dsub = p.add_subparsers(dest="devices_command", metavar="ACTION")
    dsub.required = True
    lp = dsub.add_parser("list", help="the devices qae knows, with their health")
    add_devices_file(lp)
    add_json(lp, "print one JSON list on stdout")
    lp.set_defaults(func=cmd_list)
    cp = dsub.add_parser("check", help="handshake with devices: runtimes, sensors, governor, clock offset")
    cp.add_argument("names", nargs="*", metavar="NAME", help="devices to check (default: all)")
    add_devices_file(cp)
    add_json(cp, "print one JSON list on stdout")
    cp.set_defaults(func=cmd_check)

    mp = sub.add_parser("measure", help="measure a model's latency, memory and energy on a device")
    add_model(mp, "an .onnx/.tflite file or builtin:NAME")
    mp.add_argument("--device", default="local", help="device name from devices.yaml (default: local)")
    add_devices_file(mp)
    add_genome(mp, help="quantize the model with this genome (YAML or JSON) first")
    add_calib(mp, "calibration data (.npz) for --genome, whose first inference also sets the input shapes; "
                  "builtins have their own")
    add_data(mp)
    add_input_shape(mp)
    add_data_options(mp, scoring=False)  # the layout shapes the data's first inference
    mp.add_argument("--runs", type=int, default=50, help="minimum timed runs (default 50)")
    mp.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds (default 1.0)")
    mp.add_argument("--warmup-runs", type=int, default=1, help="minimum warm-up runs (default 1)")
    mp.add_argument("--warmup-seconds", type=float, default=0.5, help="minimum warm-up seconds (default 0.5)")
    mp.add_argument("--timeout", type=float, default=120.0, help="hard limit on one measurement, s (default 120)")
    mp.add_argument("--threads", type=int, help="runtime threads (default: the device's setting)")
    mp.add_argument("--profile-ops", action="store_true", help="also report per-op times where the runtime can")
    mp.add_argument("--retries", type=int, default=1, help="retries for transient failures (default 1)")
    mp.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure N times, each in a fresh process, and report the spread of their p50s "
                         "against the 5 %% replicability rule (default 1)")
    add_json(mp, "print the record as JSON on stdout (with --repeat: every repeat and the spread)")
    mp.set_defaults(func=cmd_measure)


def _where(dev: DeviceConfig) -> str:
    if dev.transport == "ssh":
        return f"{dev.user + '@' if dev.user else ''}{dev.host}:{dev.port}"
    return dev.transport


def cmd_list(args: argparse.Namespace) -> int:
    devices = load_devices(args.devices)
    health = HealthStore()
    rows = []
    for dev in devices.values():
        d = dev.to_dict()
        d["health"] = health.get(dev)
        rows.append(d)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} devices")
    for col in ("name", "transport", "where", "runtime", "sensor", "profile", "tags", "health"):
        table.add_column(col)
    for dev in devices.values():
        h = health.get(dev)
        table.add_row(dev.name, dev.transport, _where(dev), dev.runtime, str(dev.sensor), dev.profile or "",
                      ",".join(dev.tags), h["state"], style="red" if h["state"] == QUARANTINED else None)
    Console().print(table)
    return 0


def check_device(dev: DeviceConfig, health: HealthStore) -> dict[str, Any]:
    """Handshake with one device; the row for ``qae devices check`` (health updated)."""
    before = health.get(dev)
    row: dict[str, Any] = {"device": dev.name, "transport": dev.transport, "ok": False,
                           "was_quarantined": before.get("state") == QUARANTINED}
    try:
        transport = connect(dev)
        try:
            facts = transport.handshake()
        finally:
            transport.close()
        row.update(ok=True, facts=facts)
        health.record(dev, True)
    except DeviceError as exc:
        row.update(error_kind=exc.kind, message=exc.detail)
        health.record(dev, False, exc.kind, exc.detail)
    except InputError as exc:
        row.update(error_kind="CONFIG", message=str(exc))
    row["health"] = health.get(dev)
    return row


def _runtimes(facts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['version']}" + (f" [{','.join(v['providers'])}]" if v.get("providers") else "")
                     for k, v in facts.get("runtimes", {}).items() if isinstance(v, dict) and "version" in v)


def _sensors(facts: dict[str, Any]) -> str:
    return "; ".join(s.get("method") or f"{s['name']}: {s.get('error')}" for s in facts.get("sensors", [])) or "none"


def cmd_check(args: argparse.Namespace) -> int:
    devices = load_devices(args.devices)
    names = args.names or list(devices)
    unknown = [n for n in names if n not in devices]
    if unknown:
        raise InputError(f"unknown device {unknown[0]!r}; known devices: {', '.join(sorted(devices))}")
    health = HealthStore()
    rows = [check_device(devices[n], health) for n in names]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="device check")
        for col in ("device", "status", "health", "agent / python", "cpu", "runtimes", "sensors", "governor",
                    "clock offset"):
            table.add_column(col)
        for r in rows:
            h = r["health"]
            state = h["state"] + (f" ({h.get('consecutive_failures')} failures, last {h.get('last_error_kind')})"
                                  if h["state"] == QUARANTINED else "")
            if not r["ok"]:
                table.add_row(r["device"], f"FAIL {r['error_kind']}", state, r["message"][:200], "", "", "", "", "",
                              style="red")
                continue
            f = r["facts"]
            table.add_row(r["device"], "OK", state, f"{f['agent_version']} / {f['python']}",
                          f"{f['cpu_model']} x{f['cpu_count']}", _runtimes(f), _sensors(f), str(f.get("governor")),
                          f"{f['clock_offset_s'] * 1000:+.1f} ms (rtt {f['rtt_s'] * 1000:.0f} ms)")
        console = Console()
        console.print(table)
        for r in rows:
            h = r["health"]
            if h["state"] == QUARANTINED:
                console.print(f"{r['device']}: QUARANTINED after {h.get('consecutive_failures')} failures in a row "
                              f"(last {h.get('last_error_kind')}: {h.get('last_error', '')}); out of scheduling "
                              "until a check passes", markup=False, soft_wrap=True)
    return 0 if all(r["ok"] for r in rows) else 1


def _model_file(args: argparse.Namespace, tmp: Path) -> tuple[Path, Any, dict[str, Any] | None]:
    """(the file to measure, the genome it was built with, {input: {shape, source}} the agent feeds).

    Shapes: ``--input-shape`` wins, then the data's first inference, then the model's fixed
    dimensions; a symbolic dimension none of them fixes is an error here, not a 1 on the device.
    A .tflite file carries its own shapes (only ``--input-shape`` resizes it)."""
    from harness.core.model import resolve_model_path
    from harness.run.shapes import SHAPE_FLAGS, resolve_shapes, shape_sources

    flags = parse_shapes(args.input_shape)
    path = resolve_model_path(args.model)[0]
    if path.suffix == ".tflite" and not args.genome:  # with a genome: built by ai-edge-quantizer below
        shapes = {k: {"shape": v, "source": "flag"} for k, v in flags.items()}
        return path, None, shapes or None
    if not args.genome:
        from harness.core.errors import ModelError

        try:
            shaped = resolve_shapes(args.model, flags, args.data or args.calib, data_options(args),
                                    require_layers=False)
        except ModelError:
            if args.data or args.calib or str(args.model).startswith("builtin:"):
                raise
            # This host cannot read the file (the device's runtime may): the device tries, and its
            # record says why it failed, or which symbolic dimensions it had to set to 1.
            return path, None, {k: {"shape": v, "source": "flag"} for k, v in flags.items()} or None
        return path, None, shaped.table()
    from harness.quant.litert_workload import open_workload
    from harness.quant.quantize import model_suffix, save_model

    work = open_workload(args.model, None, calib=args.calib, input_shapes=flags or None, options=data_options(args))
    work.model.require_shapes(SHAPE_FLAGS)
    genome = work.load_genome(args.genome)
    result = work.build(genome)
    out = tmp / f"{genome.hash}{model_suffix(result)}"
    save_model(result, out)
    sources = shape_sources(work.model, flags, set(work.model.shapes_used) - set(flags))
    table = {k: {"shape": list(v), "source": sources.get(k, "data")} for k, v in work.model.shapes_used.items()}
    return out, genome, table


def cmd_measure(args: argparse.Namespace) -> int:
    dev = get_device(args.device, args.devices)
    settings = MeasureSettings(runs=args.runs, min_seconds=args.min_seconds, warmup_runs=args.warmup_runs,
                               warmup_seconds=args.warmup_seconds, timeout_s=args.timeout, threads=args.threads,
                               profile_ops=args.profile_ops)
    if settings.runs < 1 or settings.min_seconds < 0 or settings.timeout_s <= 0:
        raise InputError("--runs must be >= 1, --min-seconds >= 0 and --timeout > 0")
    repeat = getattr(args, "repeat", 1)
    if repeat < 1:
        raise InputError(f"--repeat {repeat}: give at least 1 (the number of fresh processes to measure in)")
    health = HealthStore()
    recs: list[MeasureRecord] = []
    with tempfile.TemporaryDirectory(prefix="qae-measure-") as tmp:
        path, genome, shapes = _model_file(args, Path(tmp))
        settings.genome = genome
        settings.base_model = args.model if genome is not None else None
        settings.input_shapes = None if shapes is None else {k: v["shape"] for k, v in shapes.items()}
        transport = connect(dev)
        try:
            # Each measurement runs in a fresh child process of the agent (its ``method.process``), so
            # repeats on one connection are fresh processes: load, warm-up and timed runs each time.
            for _ in range(repeat):
                rec = measure_with_retries(transport, path, settings, retries=args.retries)
                recs.append(rec)
                if not rec.ok:
                    break
        finally:
            transport.close()
        split = _split_profile(path, args.model, genome, recs[-1])
    for rec in recs:
        health.record(dev, rec.ok, rec.error_kind, rec.message)
    rec = recs[-1]
    ok = all(r.ok for r in recs)
    out = _record_json(recs[0] if ok else rec)
    out["model"] = args.model
    out["input_shapes"] = shapes
    if genome is not None:
        out["genome_hash"] = genome.hash
    spread = replicability([r.latency_ms["p50"] for r in recs if r.latency_ms]) if ok else None
    if repeat > 1:
        out["repeats"] = [_record_json(r) for r in recs]
        out["spread"] = spread.to_dict() if spread is not None else None
    if split is not None:
        out["layer_times"] = split.to_dict()
    if args.json:
        print(json.dumps(out, default=str))
    elif not ok:
        print(f"qae: measurement failed: {rec.error_kind}: {rec.message}"
              + (f" (repeat {len(recs)} of {repeat})" if repeat > 1 else ""), file=sys.stderr)
    elif repeat == 1:
        _print_record(rec)
    else:
        _print_repeats(recs, spread)
    if ok and not args.json and settings.profile_ops:
        _print_split(rec, split, path.suffix)
    return 0 if ok else 3


def _split_profile(path: Path, model: str, genome: Any, rec: MeasureRecord) -> Any:
    """The record's per-op profile split by layer (``harness.quant.opmap.layer_times``): the layers of
    the float model a genome was built from, else of the measured file itself; None without a profile
    (a .tflite, an agent before 1.5, a failed measurement)."""
    if not rec.ok or not rec.op_profile or path.suffix != ".onnx":
        return None
    import onnx

    from harness.core.errors import ModelError
    from harness.core.model import load_model
    from harness.quant.opmap import layer_times

    try:
        layers = load_model(model if genome is not None else path, require_layers=False).layers
    except ModelError:
        layers = []  # a file this host cannot inventory: its time goes by op type
    return layer_times(onnx.load(str(path), load_external_data=False), layers, rec.op_profile)


def _print_split(rec: MeasureRecord, split: Any, suffix: str) -> None:
    """Per-layer and per-op-type times of the profiled runs (printed after the timed summary)."""
    if split is None:
        why = ("a .tflite has no per-op profile here" if suffix == ".tflite"
               else f"agent {rec.environment.get('agent_version') or '?'} sends no per-op profile (1.5 does)")
        print(f"  per-op times: none ({why})")
        return
    prof = rec.op_profile or {}
    run = f", {split.run_ms:.4f} ms per profiled run" if split.run_ms is not None else ""
    lines = [f"  per-op profile: {prof.get('runs')} extra profiled runs (not in the latency above){run}; "
             f"kernels {split.total_ms:.4f} ms, medians per run"]
    width = max([len(k) for k in split.layers] + [len("(other) " + k) for k in split.unattributed] + [10])
    for name, ms in split.layers.items():
        lines.append(f"    {name:<{width}s} {ms:9.4f} ms")
    for op, ms in sorted(split.unattributed.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {'(other) ' + op:<{width}s} {ms:9.4f} ms")
    print("\n".join(lines))


def _record_json(rec: MeasureRecord) -> dict[str, Any]:
    """A record as JSON, with the p50's interval (or why there is none)."""
    out = rec.to_dict()
    out["p50_ci95"] = list(median_ci(rec.runs_ms)) if rec.ok and rec.runs_ms else None
    if rec.ok and not rec.runs_ms:
        out["no_interval"] = _no_interval(rec)
    return out


def _no_interval(rec: MeasureRecord) -> str:
    return f"no interval: agent {rec.environment.get('agent_version') or '?'} does not send its runs"


def _p50_ci(rec: MeasureRecord) -> str:
    if not rec.runs_ms:
        return _no_interval(rec)
    lo, hi = median_ci(rec.runs_ms)
    return f"95 % CI [{lo:.4f}, {hi:.4f}] ({MEDIAN_CI_METHOD}, {len(rec.runs_ms)} runs)"


def _print_repeats(recs: list[MeasureRecord], spread: Spread | None) -> None:
    first = recs[0]
    env = first.environment.get("runtime", {})
    lines = [f"{first.source} on {first.device} ({env.get('name', '')} {env.get('version', '')}), "
             f"{len(recs)} repeats, each a fresh process:"]
    for i, r in enumerate(recs, 1):
        lat = r.latency_ms or {}
        lines.append(f"  repeat {i}: p50 {lat['p50']:.4f} ms  {_p50_ci(r)}")
    if spread is not None:
        lines.append(f"  {spread.words}")
    lines.append(f"  inputs {_fed(first)}")
    print("\n".join(lines))


def _print_record(rec: MeasureRecord) -> None:
    lat = rec.latency_ms or {}
    env = rec.environment.get("runtime", {})
    lines = [
        f"{rec.source} on {rec.device} ({env.get('name', '')} {env.get('version', '')}):",
        f"  latency ms: p50 {lat['p50']:.4f}  p90 {lat['p90']:.4f}  mean {lat['mean']:.4f}  std {lat['std']:.4f}  "
        f"min {lat['min']:.4f}  max {lat['max']:.4f}  n {lat['n']}",
        f"  p50 {_p50_ci(rec)}",
        f"  inputs {_fed(rec)}",
        f"  load {rec.load_ms or 0:.1f} ms, first run {rec.first_run_ms or 0:.3f} ms",
        f"  peak memory {rec.peak_memory_bytes or 0:,} bytes (growth over idle {rec.memory_growth_bytes or 0:,})",
    ]
    if rec.energy_j is not None:
        idle = f", idle {rec.idle_power_w:.2f} W" if rec.idle_power_w is not None else ""
        lines.append(f"  energy {rec.energy_j * 1e3:.4f} mJ/inference [{rec.energy_method}]{idle}")
    else:
        lines.append("  energy: no sensor on this device (not estimated)")
    print("\n".join(lines))


def _fed(rec: MeasureRecord) -> str:
    """The shapes the device fed, and any symbolic dimension it had to set to 1 (an older agent)."""
    fed = rec.method.get("input_shapes") or {}
    text = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in fed.items()) or "(not reported by this agent)"
    assumed = rec.method.get("symbolic_dims_set_to_1") or []
    if assumed:
        text += f" (symbolic dimensions of {', '.join(assumed)} set to 1: the host sent no shape)"
    return text
