"""On-device inference (issue #6): the agent runs eval inputs through a model on the device and the
host gets the first output back, over the local transport and over real SSH (the in-process paramiko
server), checked against onnxruntime on the host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import InferRecord, InferSettings, Transport
from tests.sshd import open_transport

BUILTIN = Path(__file__).resolve().parents[2] / "harness" / "builtin" / "digits_vit"
MODEL, DATA = BUILTIN / "model.onnx", BUILTIN / "eval.npz"
FAST = InferSettings(timeout_s=60)


@pytest.fixture(scope="module", params=["local", "ssh-paramiko"])
def transport(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transport]:
    with open_transport(request.param, tmp_path_factory.mktemp(request.param)) as t:
        yield t


def check_ok(rec: InferRecord, transport: Transport) -> np.ndarray:
    assert rec.ok, (rec.error_kind, rec.message)
    assert rec.error_kind is None and rec.source == "measured" and rec.device == transport.device.name
    assert rec.outputs is not None and rec.outputs.dtype == np.float32 and rec.outputs.shape[0] == rec.n
    assert rec.seconds is not None and rec.seconds >= 0
    assert rec.environment["runtime"]["name"] == "onnxruntime" and rec.environment["runtime"]["version"]
    d = rec.to_dict()
    assert "outputs" not in d and d["output_shape"] == list(rec.outputs.shape) and d["output_dtype"] == "float32"
    json.dumps(d)
    return rec.outputs


def test_digits_vit_matches_host(transport: Transport) -> None:
    first = transport.infer(MODEL, DATA, FAST)
    out = check_ok(first, transport)
    data = np.load(DATA)
    host = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"pixels": data["pixels"]})[0]
    assert out.shape == host.shape == (len(data["labels"]), 10)
    assert np.allclose(out, host, atol=1e-5)
    acc_device = float((out.argmax(1) == data["labels"]).mean())
    acc_host = float((host.argmax(1) == data["labels"]).mean())
    assert acc_device == acc_host
    assert first.model_sha256 and first.data_sha256 and first.method["batch"] == 64
    assert first.method["transfer"] == "inline"
    # a second call (another batch size) uploads nothing new and gives the same outputs
    second = transport.infer(MODEL, DATA, InferSettings(timeout_s=60, batch=7))
    assert np.allclose(check_ok(second, transport), host, atol=1e-5)
    assert second.uploaded_bytes == 0 and second.method["batch"] == 7
    assert first.uploaded_bytes in (0, MODEL.stat().st_size + DATA.stat().st_size)  # 0: another test sent them


def embedder(path: Path, t: int = 4, d: int = 3, fixed_batch: int | None = None) -> Path:
    """A tiny token-embedding model: inputs x [N, T, D] float and attention_mask [N, T] int64; first
    output y = 2 x ([N, T, D]), second the mask as float (so the mask input is used)."""
    n: int | str = fixed_batch if fixed_batch else "batch"
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]),
         helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT)],
        "embedder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, t, d]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [n, t])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, t, d]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [n, t])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def token_data(path: Path, n: int = 5, t: int = 4, d: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    x = np.arange(n * t * d, dtype=np.float32).reshape(n, t, d)
    mask = np.zeros((n, t), dtype=np.int64)
    for i in range(n):
        mask[i, : 1 + i % t] = 1  # row i attends to its first 1 + i % t tokens
    np.savez(path, x=x, attention_mask=mask, labels=np.arange(n))
    return path, x, mask


def test_mean_pool_with_mask(transport: Transport, tmp_path: Path) -> None:
    model = embedder(tmp_path / "embed.onnx")
    data, x, mask = token_data(tmp_path / "tokens.npz")
    rec = transport.infer(model, data, InferSettings(timeout_s=60, batch=2, reduce="mean_pool",
                                                     mask_input="attention_mask"))
    out = check_ok(rec, transport)
    expected = np.zeros((5, 3))
    for i in range(5):
        kept = [2 * x[i, j] for j in range(4) if mask[i, j]]
        expected[i] = sum(kept) / len(kept)
    assert out.shape == (5, 3) and np.allclose(out, expected, atol=1e-5)
    assert rec.method["reduce"] == "mean_pool" and rec.method["batches"] == 3
    plain = check_ok(transport.infer(model, data, InferSettings(timeout_s=60, reduce="mean_pool")), transport)
    assert np.allclose(plain, (2 * x).mean(axis=1), atol=1e-5)  # no mask: the plain mean over tokens
    raw = check_ok(transport.infer(model, data, FAST), transport)
    assert raw.shape == (5, 4, 3) and np.allclose(raw, 2 * x)


def test_fixed_batch_pads_the_last_batch(tmp_path: Path) -> None:
    t = connect(DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "cache"), sensor="none"))
    try:
        model = embedder(tmp_path / "fixed.onnx", fixed_batch=4)
        data, x, _ = token_data(tmp_path / "tokens.npz", n=10)
        rec = t.infer(model, data, InferSettings(timeout_s=60, batch=64))
        assert np.allclose(check_ok(rec, t), 2 * x) and rec.method["batch"] == 4 and rec.method["batches"] == 3
    finally:
        t.close()


def test_large_output_is_fetched_in_chunks(transport: Transport, tmp_path: Path) -> None:
    """An output over the inline limit and the fetch chunk (~5.2 MB) comes back whole by ``fetch``."""
    model = embedder(tmp_path / "embed16.onnx", t=64, d=16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1280, 64, 16)).astype(np.float32)
    np.savez(tmp_path / "big.npz", x=x, attention_mask=np.ones((1280, 64), dtype=np.int64))
    rec = transport.infer(model, tmp_path / "big.npz", InferSettings(timeout_s=60, batch=256))
    out = check_ok(rec, transport)
    assert out.shape == (1280, 64, 16) and np.array_equal(out, 2 * x)
    assert rec.method["transfer"] == "fetch in 2 pieces"


def test_unloadable_model(transport: Transport, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    rec = transport.infer(bad, DATA, FAST)
    assert not rec.ok and rec.error_kind == "MODEL_LOAD" and "load" in rec.message and rec.outputs is None
    assert transport.infer(tmp_path / "missing.onnx", DATA, FAST).error_kind == "MODEL_LOAD"


def test_data_that_does_not_match_the_model(transport: Transport, tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", images=np.zeros((3, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    rec = transport.infer(MODEL, tmp_path / "wrong.npz", FAST)
    assert not rec.ok and rec.error_kind == "REMOTE_ERROR"
    assert "'pixels'" in rec.message and "images" in rec.message and "matched to model inputs by name" in rec.message
    np.savez(tmp_path / "shape.npz", pixels=np.zeros((3, 1, 4, 4), np.float32))
    rec = transport.infer(MODEL, tmp_path / "shape.npz", FAST)
    assert rec.error_kind == "REMOTE_ERROR" and "needs [" in rec.message
    rec = transport.infer(MODEL, DATA, InferSettings(timeout_s=60, reduce="max"))
    assert rec.error_kind == "REMOTE_ERROR" and "reduce" in rec.message
    rec = transport.infer(MODEL, DATA, InferSettings(timeout_s=60, reduce="mean_pool"))
    assert rec.error_kind == "REMOTE_ERROR" and "rank" in rec.message
    assert transport.infer(MODEL, tmp_path / "missing.npz", FAST).error_kind == "DATA_LOAD"
    # the session survives every one of these
    assert transport.infer(MODEL, DATA, FAST).ok


def test_tflite_is_unsupported(transport: Transport, tmp_path: Path) -> None:
    lite = tmp_path / "m.tflite"
    lite.write_bytes(b"TFL3 not really")
    rec = transport.infer(lite, DATA, FAST)
    assert rec.error_kind == "UNSUPPORTED" and ".tflite" in rec.message


def test_simulated_is_unsupported() -> None:
    t = connect(DeviceConfig(name="sim", transport="simulated", simulation={"latency_ms": 1.0}))
    rec: Any = t.infer(MODEL, DATA, FAST)
    assert not rec.ok and rec.error_kind == "UNSUPPORTED" and rec.source == "simulated"
    assert "real device" in rec.message and rec.outputs is None
    t.close()


def test_agent_names_stay_strict(tmp_path: Path) -> None:
    """Data uploads use the same sha256 and extension checks as models; result ids are checked too."""
    import base64
    import hashlib

    from tests.agent.test_agent import Raw

    a = Raw(tmp_path)
    payload = DATA.read_bytes()[:1000]
    good = hashlib.sha256(payload).hexdigest()
    r = a.call(1, "put", sha256=good, ext=".npz", offset=0, last=True, data=base64.b64encode(payload).decode())
    assert r["ok"] and (tmp_path / "data" / f"{good}.npz").read_bytes() == payload
    assert a.call(2, "has_model", sha256=good, ext=".npz")["result"]["present"]
    r = a.call(3, "put", sha256="0" * 64, ext=".npz", offset=0, last=True, data=base64.b64encode(payload).decode())
    assert r["error"]["kind"] == "UPLOAD"
    assert a.call(4, "fetch", result_id="../../etc/passwd", offset=0)["error"]["kind"] == "PROTOCOL"
    a.close()
    b = Raw(tmp_path)
    assert b.call(1, "has_model", sha256=good, ext=".npy")["error"]["kind"] == "PROTOCOL"
    b.close()
