"""The real agent measures a .tflite (issue 21) with LiteRT's interpreter and XNNPACK, over the local
transport and over SSH (the in-process paramiko server), and its handshake says which LiteRT runtime
it uses. The model is the session's small converted module (``tests/conftest.py``'s ``lite``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.devices.transport import MeasureSettings, Transport
from tests.extras import require_litert
from tests.sshd import open_transport

require_litert()
FAST = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.0, idle_seconds=0.0, timeout_s=60, threads=1,
                       input_shapes={"pixels": [1, 2, 6, 6]})


@pytest.fixture(scope="module", params=["local", "ssh-paramiko"])
def transport(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transport]:
    with open_transport(request.param, tmp_path_factory.mktemp(request.param)) as t:
        yield t


def test_handshake_names_the_litert_runtime(transport: Transport) -> None:
    litert = transport.handshake()["runtimes"]["litert"]
    assert litert["module"] == "ai_edge_litert" and litert["version"] and "XNNPACK" in litert["delegate"]


def test_measures_a_tflite(transport: Transport, lite: dict[str, Any]) -> None:
    rec = transport.measure(Path(lite["model"]), FAST)
    assert rec.ok, (rec.error_kind, rec.message)
    assert rec.source == "measured" and rec.device == transport.device.name
    runtime = rec.environment["runtime"]
    assert runtime["name"] == "litert" and runtime["version"].startswith("ai_edge_litert")
    assert any("XNNPACK" in p for p in runtime["providers"]) and "threads 1" in runtime["providers"]
    assert rec.latency_ms is not None and rec.latency_ms["p50"] > 0 and rec.method["threads"] == 1
    # a wrong shape from the host is the agent's INPUT_SHAPE record, not a crash
    bad = transport.measure(Path(lite["model"]), replace(FAST, input_shapes={"pixels": [1, 3]}))
    assert not bad.ok and bad.error_kind == "INPUT_SHAPE"
