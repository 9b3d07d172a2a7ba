"""The shapes a device feeds: the host sends them (``MeasureSettings.input_shapes``) and the agent
feeds exactly those; a symbolic dimension the host left out is an INPUT_SHAPE failure; a host that
sends none (older protocol) gets 1 for a symbolic dimension, said in the record. ``qae measure``
takes the shapes from ``--input-shape``, then the data, and refuses to guess."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import MeasureSettings

FAST = MeasureSettings(runs=3, min_seconds=0.02, warmup_runs=1, warmup_seconds=0.0, timeout_s=60)




def _local(tmp_path: Path) -> DeviceConfig:
    return DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "cache"), sensor="none")


def test_the_agent_feeds_the_shapes_the_host_sends(symbolic: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = symbolic
    with connect(_local(tmp_path)) as t:
        rec = t.measure(model, replace(FAST, input_shapes={"x": [1, 3, 32, 32]}))
        assert rec.ok, rec.message
        assert rec.method["input_shapes"] == {"x": [1, 3, 32, 32]} and rec.method["symbolic_dims_set_to_1"] == []

        # Shapes sent, but not for this input: the agent refuses to pick a size.
        rec = t.measure(model, replace(FAST, input_shapes={}))
        assert not rec.ok and rec.error_kind == "INPUT_SHAPE" and "'x'" in rec.message

        # A shape that contradicts a fixed dimension (3 channels) is refused too.
        rec = t.measure(model, replace(FAST, input_shapes={"x": [1, 5, 32, 32]}))
        assert not rec.ok and rec.error_kind == "INPUT_SHAPE"

        # An older host sends no shapes: 1 for each symbolic dimension, and the record says so.
        rec = t.measure(model, FAST)
        assert rec.ok, rec.message
        assert rec.method["input_shapes"] == {"x": [1, 3, 1, 1]} and rec.method["symbolic_dims_set_to_1"] == ["x"]


def test_a_simulated_device_costs_the_shapes_it_is_sent(symbolic: tuple[Path, Path]) -> None:
    model, _ = symbolic
    dev = DeviceConfig(name="sim", transport="simulated", profile="host-cpu")
    with connect(dev) as t:
        at32 = t.measure(model, MeasureSettings(runs=3, input_shapes={"x": [1, 3, 32, 32]}))
        at1 = t.measure(model, MeasureSettings(runs=3))
    assert at32.ok and at1.ok, (at32.message, at1.message)
    assert at32.method["input_shapes"] == {"x": [1, 3, 32, 32]} and at32.method["symbolic_dims_set_to_1"] == []
    assert at1.method["symbolic_dims_set_to_1"] == ["x"]
    assert at32.latency_ms and at1.latency_ms and at32.latency_ms["p50"] > at1.latency_ms["p50"]


def _qae(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True,
                          timeout=180)


def test_qae_measure_takes_shapes_from_the_data_or_the_flag(symbolic: tuple[Path, Path]) -> None:
    model, data = symbolic
    fast = ["--runs", "3", "--min-seconds", "0.02", "--warmup-seconds", "0"]
    p = _qae("measure", str(model), "--data", str(data), "--json", *fast)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["input_shapes"] == {"x": {"shape": [1, 3, 32, 32], "source": "data", "data": str(data)}}
    assert out["method"]["input_shapes"] == {"x": [1, 3, 32, 32]}

    p = _qae("measure", str(model), "--input-shape", "x=1x3x64x48", *fast)
    assert p.returncode == 0, p.stderr
    assert "inputs x 1x3x64x48" in p.stdout

    p = _qae("measure", str(model), *fast)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "'x'" in p.stderr and "--input-shape" in p.stderr


def test_qae_measure_splits_its_per_op_profile_by_layer(tmp_path: Path) -> None:
    genome = tmp_path / "g.json"
    genome.write_text(json.dumps({"default": {"weight_bits": 8, "activation_bits": 8}}))
    fast = ["--runs", "5", "--min-seconds", "0.02", "--warmup-seconds", "0"]
    p = _qae("measure", "builtin:digits-vit", "--genome", str(genome), "--profile-ops", "--json", *fast)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    split = out["layer_times"]
    from harness.core.model import load_model

    layers = [layer.name for layer in load_model("builtin:digits-vit").layers]
    assert list(split["layers"]) == layers
    assert {n["layer"] for n in split["nodes"] if n["layer"]} == set(layers)  # every layer's kernel was found
    kernels = sum(n["ms"] for n in out["op_profile"]["nodes"])
    assert abs(split["total_ms"] - kernels) < 1e-9  # every profiled node is a layer's or "other"
    text = _qae("measure", "builtin:digits-vit", "--genome", str(genome), "--profile-ops", *fast)
    assert text.returncode == 0, text.stderr
    assert "extra profiled runs (not in the latency above)" in text.stdout
    assert "blocks.0.attn.q_proj" in text.stdout and "(other) " in text.stdout  # the model's own ops, by type
