"""Weight rounding (issue 15): RTN is qae's per-channel quantizer, per-block layouts hold, and MSE
clipping, HQQ and GPTQ lower the error against RTN at the same bits and block size on real layers
of digits-vit; GPTQ's calibration inputs are collected once and cached like ranges.

Run with ``-s`` to see the error table (relative squared error: ``||W - Wq||^2 / ||W||^2`` for the
weight, ``||xW - xWq||^2 / ||xW||^2`` for the output on calibration and on held-out inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import numpy_helper

from harness.core.errors import InputError
from harness.core.genome import Gene
from harness.quant import rounding
from harness.quant.quantize import fake_quantize, weight_qparams
from harness.quant.rounding import activation_samples, grid, quantize_weight, samples_cache_path

LAYERS = ("blocks.1.ffn.fc2", "blocks.0.ffn.fc1", "blocks.1.attn.out_proj")


def _weight(work: Any, name: str) -> tuple[Any, np.ndarray]:
    layer = next(lay for lay in work.model.layers if lay.name == name)
    init = next(t for t in work.model.proto.graph.initializer if t.name == layer.weight)
    return layer, numpy_helper.to_array(init).astype(np.float32)


def _rel(err: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum(err.astype(np.float64) ** 2) / np.sum(ref.astype(np.float64) ** 2))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_rtn_is_the_per_channel_quantizer(digits_workload: Any, bits: int, scheme: str) -> None:
    for layer in digits_workload.model.layers:
        _, w = _weight(digits_workload, layer.name)
        gene = Gene(weight_bits=bits, activation_bits="fp", scheme=scheme, granularity="per_channel")
        expected = fake_quantize(w, weight_qparams(w, gene, layer.channel_axis), layer.channel_axis)
        flat = w.reshape(w.shape[0], -1) if layer.op_type == "Conv" else w  # a Conv: per output channel
        axis = 1 if layer.op_type == "Conv" else 1 - layer.channel_axis
        got = quantize_weight(flat, bits, block_axis=axis, block_size=None, symmetric=scheme == "symmetric")
        assert np.array_equal(got.dequantize().reshape(w.shape), expected), layer.name
        lo, hi = grid(bits, scheme == "symmetric")
        assert got.q.min() >= lo and got.q.max() <= hi
        assert got.scale.shape == tuple(1 if i == axis else d for i, d in enumerate(flat.shape))
        assert (got.zero_point is None) == (scheme == "symmetric")


@pytest.mark.parametrize("method", rounding.METHODS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_block_shapes_with_a_partial_last_block(method: str, symmetric: bool) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((100, 6)).astype(np.float32)  # K = 100: blocks of 32, 32, 32 and 4
    x = rng.standard_normal((300, 100)).astype(np.float32)
    for axis, arr in ((0, w), (1, np.ascontiguousarray(w.T))):
        got = quantize_weight(arr, 4, block_axis=axis, block_size=32, symmetric=symmetric, method=method, x=x)
        want = (4, 6) if axis == 0 else (6, 4)
        assert got.q.shape == arr.shape and got.q.dtype == np.int32
        assert got.scale.shape == want and got.scale.dtype == np.float32
        assert got.zero_point is None if symmetric else got.zero_point.shape == want  # type: ignore[union-attr]
        lo, hi = grid(4, symmetric)
        assert got.q.min() >= lo and got.q.max() <= hi
        assert got.dequantize().shape == arr.shape and got.dequantize().dtype == np.float32
        if method == "rtn":  # per-block scales reproduce the weights within half a step
            step = got.expand(got.scale)
            assert np.all(np.abs(got.dequantize() - arr) <= step / 2 * (1 + 1e-5))
            last = np.moveaxis(arr, axis, 0)[96:]  # the partial block's scale is its own 4 rows'
            absmax = np.abs(last).max(axis=0)
            if symmetric:
                np.testing.assert_allclose(np.moveaxis(got.scale, axis, 0)[3], absmax / 7, rtol=1e-6)


def test_block_larger_than_the_axis_is_one_block() -> None:
    w = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    got = quantize_weight(w, 4, block_axis=0, block_size=64, symmetric=False)
    per_channel = quantize_weight(w, 4, block_axis=0, block_size=None, symmetric=False)
    assert got.scale.shape == (1, 3)
    assert np.array_equal(got.dequantize(), per_channel.dequantize())


def test_bad_arguments_are_one_line_errors() -> None:
    w = np.ones((8, 4), np.float32)
    for kwargs, words in (
        ({"method": "awq"}, "not supported"),
        ({"bits": 9}, "2 to 8 bits"),
        ({"block_axis": 2}, "block axis"),
        ({"method": "gptq"}, "needs the layer's calibration inputs"),
        ({"method": "gptq", "x": np.ones((5, 3), np.float32)}, "[S, 8]"),
    ):
        args: dict[str, Any] = {"bits": 4, "block_axis": 0, "block_size": None, "symmetric": True, **kwargs}
        bits = args.pop("bits")
        with pytest.raises(InputError, match=None) as info:
            quantize_weight(w, bits, **args)
        assert words in str(info.value) and "\n" not in str(info.value)


def _table_row(name: str, bits: int, block: int | None, symmetric: bool, vals: dict[str, tuple[float, ...]]) -> str:
    cells = "  ".join(f"{m} w={v[0]:.5f} o={v[1]:.5f} held-out o={v[2]:.5f}" for m, v in vals.items())
    return f"{name} {bits}b block={block} {'sym' if symmetric else 'asym'}: {cells}"


@pytest.mark.parametrize("bits", [4, 3])
def test_mse_hqq_gptq_beat_rtn_on_real_layers(digits_workload: Any, bits: int) -> None:
    work = digits_workload
    xs = activation_samples(work.model, work.calib, LAYERS)
    held = activation_samples(work.model, work.eval_data, LAYERS)
    for name in LAYERS:
        layer, w = _weight(work, name)
        x, xh = xs[name].astype(np.float64), held[name].astype(np.float64)
        axis = 1 - layer.channel_axis
        for block in (None, 16, 32):
            for symmetric in (True, False):
                vals: dict[str, tuple[float, ...]] = {}
                for method in rounding.METHODS:
                    deq = quantize_weight(w, bits, block_axis=axis, block_size=block, symmetric=symmetric,
                                          method=method, x=xs[name]).dequantize().astype(np.float64)
                    vals[method] = (_rel(deq - w, w), _rel(x @ deq - x @ w, x @ w), _rel(xh @ deq - xh @ w, xh @ w))
                print(_table_row(name, bits, block, symmetric, vals))
                rtn = vals["rtn"]
                assert vals["mse"][0] < rtn[0]
                assert vals["hqq"][0] < rtn[0]
                assert vals["gptq"][1] < 0.7 * rtn[1]  # on the inputs it was fitted to
                assert vals["gptq"][2] < rtn[2]  # and on held-out inputs


def test_activation_samples_are_cached_and_reused(digits_workload: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    work = digits_workload
    names = ["blocks.0.ffn.fc2", "head"]
    first = activation_samples(work.model, work.calib, names, max_rows=300)
    assert set(first) == set(names)
    assert first["blocks.0.ffn.fc2"].shape[1] == 128 and first["head"].shape[1] == 32
    assert all(1 <= a.shape[0] <= 300 and a.dtype == np.float32 for a in first.values())
    assert samples_cache_path(work.model, work.calib, names, 300).is_file()

    def no_run(*args: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(rounding, "_collect", no_run)
    again = activation_samples(work.model, work.calib, list(reversed(names)), max_rows=300)
    for name in names:
        assert np.array_equal(first[name], again[name])


def _one_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qae: warning: activation cache")
    return lines[0]


def test_a_bad_cache_entry_is_recomputed(digits_workload: Any, capsys: pytest.CaptureFixture[str]) -> None:
    work = digits_workload
    names = ["blocks.1.attn.q_proj"]
    good = activation_samples(work.model, work.calib, names, max_rows=200)
    path: Path = samples_cache_path(work.model, work.calib, names, 200)
    capsys.readouterr()
    whole = path.read_bytes()
    for damaged in (b"cut short by a full disk", whole[: len(whole) // 2]):
        path.write_bytes(damaged)
        again = activation_samples(work.model, work.calib, names, max_rows=200)
        assert "not a readable .npz" in _one_warning(capsys.readouterr().err)
        assert np.array_equal(good[names[0]], again[names[0]])
    with np.load(path, allow_pickle=False) as npz:  # a tampered array: right stamp, wrong width
        stamp = npz["stamp"]
    with open(path, "wb") as f:
        np.savez(f, stamp=stamp, x0=np.zeros((10, 7), np.float32))
    again = activation_samples(work.model, work.calib, names, max_rows=200)
    assert "not float32 [S, 32]" in _one_warning(capsys.readouterr().err)
    assert np.array_equal(good[names[0]], again[names[0]])
    with open(path, "wb") as f:  # non-finite samples
        np.savez(f, stamp=stamp, x0=np.full((10, 32), np.nan, np.float32))
    activation_samples(work.model, work.calib, names, max_rows=200)
    assert "not finite" in _one_warning(capsys.readouterr().err)
    activation_samples(work.model, work.calib, names, max_rows=200)
    assert capsys.readouterr().err == ""


def test_activation_samples_refuse_layers_without_matmul_inputs(digits_workload: Any) -> None:
    with pytest.raises(InputError, match="patch_embed"):
        activation_samples(digits_workload.model, digits_workload.calib, ["patch_embed"])
    with pytest.raises(InputError, match="no layer"):
        activation_samples(digits_workload.model, digits_workload.calib, ["nope"])


def test_samples_of_a_gemm_skip_padding_and_feed_gptq(tmp_path: Path) -> None:
    """A MatMul on [batch, seq, K] inputs with an attention mask marking padded positions, and a Gemm
    with transB (W [N, K], block_axis 1) on the same inputs flattened, where the mask does not apply."""
    import onnx
    from onnx import TensorProto, helper

    from harness.core.model import load_model
    from harness.quant.data import load_dataset

    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 16)).astype(np.float32)  # Gemm transB: W [N=24, K=16]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "mm.weight"], ["z"], name="mm"),
         helper.make_node("Reshape", ["x", "flat"], ["rows"], name="flatten"),
         helper.make_node("Gemm", ["rows", "fc.weight"], ["y"], name="fc", transB=1),
         helper.make_node("Cast", ["attention_mask"], ["m"], name="cast", to=TensorProto.FLOAT)],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5, 16]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [4, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 5, 8]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [20, 24]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [4, 5])],
        [numpy_helper.from_array(w, "fc.weight"), numpy_helper.from_array(w[:8].T.copy(), "mm.weight"),
         numpy_helper.from_array(np.array([20, 16], np.int64), "flat")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    onnx.save(proto, str(tmp_path / "m.onnx"))
    x = (rng.standard_normal((8, 5, 16)) * np.linspace(0.2, 3, 16)).astype(np.float32)
    mask = np.ones((8, 5), np.int64)
    mask[:, 3:] = 0
    np.savez(tmp_path / "d.npz", x=x, attention_mask=mask)
    model = load_model(tmp_path / "m.onnx")
    data = load_dataset(tmp_path / "d.npz", model)
    assert sorted(lay.op_type for lay in model.layers) == ["Gemm", "MatMul"]
    samples = activation_samples(model, data, [lay.name for lay in model.layers])
    by_op = {lay.op_type: samples[lay.name] for lay in model.layers}
    np.testing.assert_array_equal(by_op["MatMul"], x[:, :3].reshape(-1, 16))  # padding left out
    # the Gemm reads x flattened to [N*5, 16]: no [batch, seq] leading shape, so every row is kept
    got = by_op["Gemm"]
    np.testing.assert_array_equal(got, x.reshape(-1, 16))
    rtn = quantize_weight(w, 3, block_axis=1, block_size=None, symmetric=True).dequantize()
    gptq = quantize_weight(w, 3, block_axis=1, block_size=None, symmetric=True, method="gptq", x=got).dequantize()
    assert gptq.shape == w.shape
    assert _rel(got @ gptq.T - got @ w.T, got @ w.T) < _rel(got @ rtn.T - got @ w.T, got @ w.T)



def test_slow_methods_are_memoised_read_only() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    first = quantize_weight(w, 4, block_axis=0, block_size=16, symmetric=False, method="gptq", x=x)
    again = quantize_weight(w.copy(), 4, block_axis=0, block_size=16, symmetric=False, method="gptq", x=x.copy())
    assert again is first
    assert not first.q.flags.writeable and not first.scale.flags.writeable
    other = quantize_weight(w, 4, block_axis=0, block_size=16, symmetric=False, method="gptq", x=x[:100])
    assert other is not first
    assert quantize_weight(w, 4, block_axis=0, block_size=16, symmetric=True, method="gptq", x=x) is not first
    assert quantize_weight(w, 4, block_axis=0, block_size=16, symmetric=False, method="mse") is not first
