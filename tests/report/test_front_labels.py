"""front.json and report.html say what each value is: the accuracy carries its metric and unit, the
size none, the mean cosine its own name, also for archives written before that rule; failures are
counted per target."""

from __future__ import annotations

import json
from pathlib import Path

from harness.report.html import build_report
from harness.report.labels import Accuracy
from harness.run.archive import Archive, Value

OLD_DETAIL = {"on": "host", "runtime": "onnxruntime", "n": 32, "metric": "top1_agreement", "emulated": False}


def _old_archive(path: Path, metric: str) -> None:
    """Values labelled the way qae wrote them before: the accuracy metric on size and mean_cosine too."""
    archive = Archive(path)
    archive.start({"model": "m.onnx", "objectives": ["accuracy", "size"], "seed": 0, "population": 4,
                   "generations": 1, "layers": ["fc"]})
    detail = {**OLD_DETAIL, "metric": metric}
    for i, (acc, size) in enumerate(((0.9, 4000.0), (0.8, 1000.0))):
        values = {
            "accuracy": Value(acc, "computed", detail),
            "size": Value(size, "computed", {**detail, "unit": "bytes", "nominal": True}),
            "mean_cosine": Value(0.99, "computed", detail),
            "latency": Value(1.0, "predicted", {"profile": "host-cpu", "unit": "ms"}),
        }
        genome = {"layers": {"fc": {"weight_bits": 8 if i else "fp", "activation_bits": 8 if i else "fp"}}}
        archive.record("host-cpu", f"h{i}", genome, 1, False, True, 0.0, values, [], {}, 1)
    archive.record("host-cpu", "bad", {"layers": {"fc": {"weight_bits": 4}}}, 1, False, False, None, {},
                   [("BUILD", "ValueError: no kernel\nsecond line")], {}, 1)
    archive.close()


def test_front_json_labels_old_archives(tmp_path: Path) -> None:
    _old_archive(tmp_path / "archive.sqlite", "top1_agreement")
    build_report(tmp_path)
    front = json.loads((tmp_path / "front.json").read_text())["targets"]["host-cpu"]
    assert front["accuracy_metric"] == "top1_agreement" and front["accuracy_unit"] == "fraction"
    assert front["candidates"] == 3 and front["failed"] == 1
    assert front["most_common_error"] == {"error_kind": "BUILD", "message": "ValueError: no kernel", "count": 1}
    assert len(front["points"]) == 2
    for point in front["points"]:
        obj = point["objectives"]
        assert obj["accuracy"]["metric"] == "top1_agreement" and obj["accuracy"]["unit"] == "fraction"
        assert "metric" not in obj["size"] and "metric" not in obj["latency"]
        assert obj["mean_cosine"]["metric"] == "mean_cosine"
    page = (tmp_path / "report.html").read_text()
    assert "top-1 agreement with FP32 (%)" in page and "1 of 3 candidates failed" in page


def test_sqnr_is_shown_in_db_not_percent(tmp_path: Path) -> None:
    _old_archive(tmp_path / "archive.sqlite", "sqnr")
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "SQNR vs FP32 (dB)" in page and "accuracy (%)" not in page
    assert ">0.90<" in page  # 0.9 dB shown as it is, not as 90 %
    assert Accuracy("sqnr_db").short(31.5) == Accuracy("sqnr").short(31.5) == "31.5 dB"
    assert Accuracy("top1").short(0.5) == "50.0 %"
    assert Accuracy("mymod:score").label == "mymod:score (score)"


def test_the_recommended_point_does_not_trade_3x_of_size_for_half_a_percent_of_latency() -> None:
    """A cost whose spread over the front is a sliver of its value weighs as that sliver (the report's
    recommend): FP32 0.5 % faster (predicted) must not beat a point 3.3x smaller of the same accuracy."""
    from harness.report.html import RECOMMEND_COST_FLOOR, recommend
    from harness.run.archive import Candidate, Value

    def cand(h: str, size: float, latency: float, acc: float = 100.0) -> Candidate:
        values = {"accuracy": Value(acc, "computed", {}), "size": Value(size, "computed", {}),
                  "latency": Value(latency, "predicted", {})}
        return Candidate("t", h, 0, {}, 1, False, True, 0.0, values)

    objectives = ["accuracy", "size", "latency"]
    sliver = [cand("fp32", 3.48, 0.03012), cand("mid", 1.64, 0.03024), cand("small", 1.043, 0.03028)]
    assert recommend(sliver, objectives, None) == "small"
    # a real trade-off (latency 2x apart) is still weighed over its whole range
    wide = [cand("fast", 3.48, 0.015), cand("small", 1.043, 0.030)]
    assert recommend(wide, objectives, {"size": 1.0, "latency": 2.0}) == "fast"
    assert recommend(wide, objectives, {"size": 2.0, "latency": 1.0}) == "small"
    # accuracy keeps its own range: one point of accuracy on an even front still counts fully
    acc = [cand("accurate", 2.0, 0.02, acc=99.0), cand("cheap", 1.98, 0.0199, acc=98.0)]
    assert recommend(acc, objectives, None) == "accurate" and RECOMMEND_COST_FLOOR == 0.05


def test_a_uniform_baseline_label_goes_to_the_seeded_genome_not_a_variant_of_its_bits(tmp_path: Path) -> None:
    """w4a8 is the uniform genome the run seeds (its scheme and granularity, the QDQ kernel), not a later
    mutant with a MatMulNBits layer at the same bits; w8a8 is not the per-tensor seed of the same bits."""
    from harness.run.testsplit import baseline_hashes

    archive = Archive(tmp_path / "archive.sqlite")
    archive.start({"model": "m.onnx", "objectives": ["accuracy", "size"], "seed": 0, "population": 4,
                   "generations": 2, "layers": ["a", "b"], "scheme": "symmetric", "granularity": "per_channel"})
    grid = {"scheme": "symmetric", "granularity": "per_channel"}
    values = {"accuracy": Value(0.9, "computed", {}), "size": Value(100.0, "computed", {"unit": "bytes"})}
    genomes = [
        ("per_tensor_w8a8", 1, {"default": {**grid, "weight_bits": 8, "activation_bits": 8,
                                            "granularity": "per_tensor"}, "layers": {}}),
        ("w8a8", 1, {"default": {**grid, "weight_bits": 8, "activation_bits": 8}, "layers": {}}),
        ("w4a8", 1, {"default": {**grid, "weight_bits": 4, "activation_bits": 8}, "layers": {}}),
        ("nbits_mutant", 2, {"default": {**grid, "weight_bits": 4, "activation_bits": 8}, "layers": {
            "b": {"kernel": "matmulnbits", "granularity": "per_block", "block_size": 32, "activation_bits": "fp"}}}),
        ("w4a8_mse", 2, {"default": {**grid, "weight_bits": 4, "activation_bits": 8, "rounding": "mse"}, "layers": {}}),
    ]
    for h, gen, genome in genomes:
        archive.record("t", h, genome, gen, False, True, 0.0, values, [], {}, gen)
    found = baseline_hashes(archive, ["a", "b"])
    archive.close()
    assert found["w8a8"] == "w8a8" and found["w4a8"] == "w4a8"
