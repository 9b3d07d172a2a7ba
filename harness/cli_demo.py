"""``qae demo``: the embedded default workload end to end, with nothing to download or configure.

It quantizes builtin:digits-vit with the uniform baselines and one mixed-precision genome, evaluates
each on the held-out split, writes the models and a summary under results/RUN/, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_text

CANDIDATES: dict[str, dict[str, Any] | None] = {
    "fp32": None,
    "w8a8": {"default": {"weight_bits": 8, "activation_bits": 8}},
    "w8-dynamic": {"default": {"weight_bits": 8, "activation_bits": "dynamic"}},
    "w4a8": {"default": {"weight_bits": 4, "activation_bits": 8}},
    "mixed": {
        "default": {"weight_bits": 4, "activation_bits": 8},
        "layers": {
            "patch_embed": {"weight_bits": 8},
            "blocks.0.ffn.fc2": {"weight_bits": 8, "activation_bits": 16},
            "blocks.1.ffn.fc2": {"weight_bits": 8, "activation_bits": "dynamic"},
            "head": {"weight_bits": 8},
        },
    },
}


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the embedded default workload (builtin:digits-vit) end to end")
    p.add_argument("--out", default=None, help="run folder (default results/demo-TIMESTAMP)")
    p.add_argument("--seed", type=int, default=0, help="seed (recorded; the demo's steps are deterministic)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.pipeline import Workload
    from harness.quantize import save_model

    console = Console(stderr=True)
    out = Path(args.out or f"results/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    with console.status("calibrating builtin:digits-vit (once; cached for every candidate)"):
        work = Workload.open("builtin:digits-vit")
    rows = []
    table = Table(title="builtin:digits-vit on the held-out split (540 images), ONNX Runtime CPU on this host")
    for col in ("candidate", "top-1 %", "vs FP32 (pts)", "weights (B, nominal)", "file (B)", "emulated"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    fp32 = None
    for name, data in CANDIDATES.items():
        with console.status(f"quantizing and evaluating {name}"):
            result = None if data is None else work.build(work.genome(data))
            report = work.evaluate(result)
            if result is not None:
                save_model(result, out / f"{name}.onnx")
        fp32 = report.accuracy if fp32 is None else fp32
        rows.append({"candidate": name, "genome": data, **report.to_dict(), "source": "computed on this host"})
        table.add_row(
            name,
            f"{report.accuracy * 100:.2f}",
            f"{(report.accuracy - fp32) * 100:+.2f}",
            f"{report.weight_bytes:,}",
            f"{report.file_bytes:,}",
            "yes" if report.emulated else "no",
        )
    atomic_write_text(out / "summary.json", json.dumps({"seed": args.seed, "candidates": rows}, indent=1))
    Console().print(table)
    console.print(f"models and summary.json written to {out}/")
    return 0
