"""Block-quantized kernels against int8 and fp32 on this machine, measured and predicted (issue 15).

Run: ``python -m benchmarks.bench_kernels [--profile host-cpu-local] [--quick]``. For MiniLM's
projection shapes (384x384, 384x1536, 1536x384) at M = 1 (decode-like) and M = 64 (prefill-like)
it measures, through the local transport and the real device agent (one intra-op thread), single
layers of: fp32 MatMul, qae's int8 dynamic and int8 QDQ (w8a8) builds, and ONNX Runtime's
MatMulNBits (4-bit block 32 at accuracy_level 0 and 4, 4-bit block 128 at 4, 8-bit block 128 at 4,
8-bit block 32 at 0); for MiniLM's 30522x384 word table, fp32 Gather, qae's int8 QDQ Gather
(per-row, its default, and per-tensor) and
GatherBlockQuantized (4-bit block 32 / 128, 8-bit block 32). Beside each measurement sit the cost
model's predictions on the base ``host-cpu`` profile and on ``--profile`` (calibrated), so that a
reader sees where the profile is right and where it is not. Writes results/bench/kernels.json and
prints the table. The latency is the smallest of the timed runs (the host is shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Any

from benchmarks.common import write_result
from harness.core.paths import cache_dir
from harness.run.calibrate import MICRO_GENES, Builder, Item, Suite, kernel_items, transport_measure
from profiles import load_profile
from profiles.fit import predict_ms
from profiles.microbench import GatherShape, LayerShape

SHAPES = [(384, 384), (384, 1536), (1536, 384)]
ROWS = (1, 64)
TABLE = (30522, 384)
#: (kernel, bits, block, accuracy_level) of the MatMulNBits / GatherBlockQuantized variants measured
MNB = [("matmulnbits", 4, 32, 0), ("matmulnbits", 4, 32, 4), ("matmulnbits", 4, 128, 4),
       ("matmulnbits", 8, 128, 4), ("matmulnbits", 8, 32, 0)]
GBQ = [("gather_block", 4, 32, 0), ("gather_block", 4, 128, 0), ("gather_block", 8, 32, 0)]
GATHER_GENES = {"fp": ({"weight_bits": "fp", "activation_bits": "fp"}, "fp32 Gather"),
                "w8": ({"weight_bits": 8, "activation_bits": "fp"}, "int8 QDQ Gather (per-row)"),
                "w8t": ({"weight_bits": 8, "activation_bits": "fp", "granularity": "per_tensor"},
                        "int8 QDQ Gather (per-tensor)")}


def suite(quick: bool = False) -> tuple[Suite, list[dict[str, Any]]]:
    """The items to measure and, per item, the row it fills (shape, M, variant)."""
    shapes = SHAPES[:1] if quick else SHAPES
    items: list[Item] = []
    rows: list[dict[str, Any]] = []
    micro: dict[str, LayerShape] = {}
    gathers: dict[str, GatherShape] = {}
    for k, n in shapes:
        for m in ROWS:
            ls = LayerShape(m, k, n)
            micro[ls.tag] = ls
            for g, label in (("fp", "fp32 MatMul"), ("w8dyn", "int8 dynamic"), ("w8a8", "int8 QDQ w8a8")):
                items.append(Item(f"bench-{ls.tag}-{g}", f"micro:{ls.tag}", {"default": MICRO_GENES[g]}, "fit"))
                rows.append({"layer": f"MatMul {k}x{n}", "m": m, "variant": label})
            for kernel, bits, block, acc in MNB:
                it = kernel_items([(kernel, bits, block, acc, [(k, n)])], rows=(m,))[0]
                items.append(it)
                rows.append({"layer": f"MatMul {k}x{n}", "m": m,
                             "variant": f"MatMulNBits {bits}-bit block {block} acc {acc}"})
    for m in ROWS:
        gs = GatherShape(m, *TABLE)
        gathers[gs.tag] = gs
        for g, (gene, label) in GATHER_GENES.items():
            items.append(Item(f"bench-{gs.tag}-{g}", f"gather:{gs.tag}", {"default": gene}, "fit"))
            rows.append({"layer": f"Gather {TABLE[0]}x{TABLE[1]}", "m": m, "variant": label})
        for kernel, bits, block, acc in GBQ if not quick else GBQ[:1]:
            items.append(kernel_items([(kernel, bits, block, acc, [TABLE])], rows=(m,))[0])
            rows.append({"layer": f"Gather {TABLE[0]}x{TABLE[1]}", "m": m,
                         "variant": f"GatherBlockQuantized {bits}-bit block {block}"})
    return Suite(items, micro_shapes=micro, gather_shapes=gathers), rows


def main(argv: list[str] | None = None) -> int:
    from harness.devices.transport import MeasureSettings

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="host-cpu-local", help="calibrated profile to predict with")
    ap.add_argument("--quick", action="store_true", help="one MatMul shape and one GatherBlockQuantized variant")
    ap.add_argument("--min-seconds", type=float, default=0.3, help="timed seconds per model (default 0.3)")
    args = ap.parse_args(argv)
    st, rows = suite(args.quick)
    builder = Builder(st, cache_dir() / "bench-kernels")
    profiles = {"host-cpu": load_profile("host-cpu"), args.profile: load_profile(args.profile)}
    settings = MeasureSettings(runs=30, min_seconds=args.min_seconds, warmup_runs=2, warmup_seconds=0.1,
                               timeout_s=120, threads=1)
    t0 = time.perf_counter()
    gen = transport_measure("local", settings)
    measure = next(gen)
    try:
        for item, row in zip(st.items, rows):
            path, genome = builder.build(item)
            settings.input_shapes = builder.input_shapes(item)
            raw = measure(path)
            row["id"] = item.id
            if not raw.get("ok"):
                row["error"] = f"{raw.get('error_kind')}: {raw.get('message')}"
                print(f"  {item.id}: FAILED {row['error']}", file=sys.stderr)
                continue
            lat = raw["latency_ms"]
            row["measured_ms"] = float(lat["min"])
            row["measured_p50_ms"] = float(lat["p50"])
            sample = builder.sample(item, genome, row["measured_ms"], profiles["host-cpu"])
            row["class"] = [str(v) for v in sample.classes[0]]
            for name, prof in profiles.items():
                row[f"predicted_ms[{name}]"] = float(predict_ms([sample], prof)[0])
            row["weight_bytes"] = path.stat().st_size
    finally:
        gen.close()
    elapsed = time.perf_counter() - t0
    _print(rows, list(profiles))
    from benchmarks.common import environment

    load = _loadavg()
    path = write_result("kernels", {
        "benchmark": "kernels", "elapsed_s": elapsed, "profiles": {k: str(p.path) for k, p in profiles.items()},
        "calibration_id": profiles[args.profile].calibration_id, "settings": asdict(settings),
        "statistic": "min of the timed runs (p50 kept beside it)", "loadavg_after": load, "rows": rows,
        "host": environment()["machine"],
    })
    print(f"wrote {path} ({len(rows)} models, {elapsed:.0f} s; load average after: {load})")
    return 0


def _loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def _print(rows: list[dict[str, Any]], names: list[str]) -> None:
    head = f"{'layer':22s} {'M':>3s} {'variant':38s} {'measured us':>12s} " + " ".join(
        f"{'pred ' + n:>22s}" for n in names)
    print(head)
    print("-" * len(head))
    for r in rows:
        if "measured_ms" not in r:
            print(f"{r['layer']:22s} {r['m']:3d} {r['variant']:38s} {'failed':>12s}")
            continue
        preds = " ".join(f"{r[f'predicted_ms[{n}]'] * 1e3:22.1f}" for n in names)
        print(f"{r['layer']:22s} {r['m']:3d} {r['variant']:38s} {r['measured_ms'] * 1e3:12.1f} {preds}")


if __name__ == "__main__":
    raise SystemExit(main())
