"""``qae search --finetune-front K`` and ``qae finetune RUN --pick HASH`` end to end on builtin:digits-vit:
the fine-tuned candidates enter the archive with provenance ``finetuned``, the front and report are
re-derived with them, they export as their own artifact, and without torch the command is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.run.archive import Archive
from tests.cli.test_cli_model import assert_one_line_error, qae

pytest.importorskip("torch")

SMALL = ["--generations", "2", "--population", "8", "--seed", "5", "--emulated"]
TUNE = ["--steps", "30", "--eval-every", "15", "--checkpoint-every", "10"]


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "run"
    proc = qae("search", "builtin:digits-vit", "--profile", "arm-neon-a76", *SMALL, "--out", str(out),
               "--finetune-front", "1", "--finetune-steps", "30", "--finetune-eval-every", "15",
               "--finetune-max-loss", "0.3")
    assert proc.returncode == 0, proc.stderr
    return out


def test_search_finetunes_its_front_into_the_archive(tuned_run: Path) -> None:
    archive = Archive.open_existing(tuned_run / "archive.sqlite", readonly=True)
    try:
        tuned = archive.finetuned()
        assert len(tuned) == 1
        (child, prov), = tuned.items()
        cands = {c.hash: c for c in archive.candidates("arm-neon-a76")}
        parent = cands[prov["parent"]]
        assert cands[child].parent == parent.hash and cands[child].genome == parent.genome
        assert prov["kind"] == "finetuned" and prov["steps"] == 30 and prov["seed"] == 0
        assert len(prov["loss_curve"]) == 30 and prov["data"]["n"] == 1129
        assert (tuned_run / prov["model"] / "model.onnx").is_file()
        values = cands[child].values
        assert values["accuracy"].source == "computed" and values["accuracy"].detail["finetuned_from"] == parent.hash
        assert values["latency"].source == "predicted" and values["latency"].detail["from_parent"] == parent.hash
        assert values["latency"].value == parent.values["latency"].value
        # the engine never proposed it: a resume pairs the engine's records with its own candidates only
        assert len(archive.engine_records("arm-neon-a76")) == len(cands) - 1
        assert child not in archive.proposed("arm-neon-a76") and len(archive.proposed("arm-neon-a76")) == len(cands) - 1
    finally:
        archive.close()


def test_finetune_a_picked_candidate_then_export_it(tuned_run: Path, tmp_path: Path) -> None:
    front = json.loads((tuned_run / "front.json").read_text())["targets"]["arm-neon-a76"]["points"]
    pick = next(p["id"] for p in front if not p["finetuned"])
    proc = qae("finetune", str(tuned_run), "--pick", pick[:10], *TUNE, "--seed", "2")
    assert proc.returncode == 0, proc.stderr
    archive = Archive.open_existing(tuned_run / "archive.sqlite", readonly=True)
    try:
        child = next(h for h, p in archive.finetuned().items() if p["parent"] == pick)
        tuned = set(archive.finetuned())
    finally:
        archive.close()
    data = json.loads((tuned_run / "front.json").read_text())["targets"]["arm-neon-a76"]["points"]
    mine = next((p for p in data if p["id"] == child), None)
    if mine is None:  # dominated by its parent or another point: nothing of it on the front to show
        return
    assert mine["finetuned"]["parent"] == pick and mine["finetuned"]["validation"] is not None
    page = (tuned_run / "report.html").read_text()
    assert "fine-tuned from" in page
    # the interactive front carries it too: its hover names the parent and the gain, and a ring marks it
    import re

    data = json.loads(re.search(r"<script type='application/json' id='qae-data'>(.*?)</script>", page, re.S)[1])
    shown = {p["id"]: p for t in data["targets"] for p in t["points"]}
    assert shown[child]["finetuned"].startswith(f"fine-tuned from {pick[:12]}")
    assert {h for h, p in shown.items() if p["finetuned"]} <= tuned
    proc = qae("export", str(tuned_run), "--pick", child, "-o", str(tmp_path / "exp"))
    assert proc.returncode == 0, proc.stderr
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "exp" / "model.onnx")).metadata_props}
    assert props["qae.finetuned_model_sha256"]


def test_an_unknown_pick_is_one_line(tuned_run: Path) -> None:
    assert_one_line_error(qae("finetune", str(tuned_run), "--pick", "zzzz", *TUNE), "--pick 'zzzz' matches 0")


def test_without_torch_finetune_names_the_extra(tuned_run: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None; from harness.cli.main import main; "
            f"sys.exit(main(['finetune', {str(tuned_run)!r}, '--front', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "qae[train]")


def test_finetune_a_given_genome(tuned_run: Path, tmp_path: Path) -> None:
    """``--genome FILE``: the user's genome enters the run as a scored candidate, then its fine-tune."""
    genome = tmp_path / "w2.yaml"
    genome.write_text("default: {weight_bits: 2, activation_bits: 8}\n")
    proc = qae("finetune", str(tuned_run), "--genome", str(genome), *TUNE)
    assert proc.returncode == 0, proc.stderr
    archive = Archive.open_existing(tuned_run / "archive.sqlite", readonly=True)
    try:
        added = archive.added()
        (given, row), = [(h, r) for h, r in added.items() if r["kind"] == "given"]
        assert row["genome_file"] == str(genome) and row["parent"] is None
        cands = {c.hash: c for c in archive.candidates("arm-neon-a76")}
        assert cands[given].origin == "given" and cands[given].values["latency"].source == "predicted"
        child = next(h for h, r in added.items() if r["kind"] == "finetuned" and r["parent"] == given)
        # 2 bits everywhere loses most of the accuracy; 30 steps give a good part of it back
        assert cands[child].values["accuracy"].value > cands[given].values["accuracy"].value + 0.2
    finally:
        archive.close()


def test_finetune_a_gptq_block_genome(tuned_run: Path, tmp_path: Path) -> None:
    """A GPTQ-rounded block-wise genome (qae's own MatMulNBits kernel): the fine-tune starts from GPTQ's
    weights and grid, so its first score is the post-training candidate's, and the trained weights are
    exported on that grid (block scales ``[N, blocks]`` in scales.json), built and scored like any candidate."""
    import yaml

    gene = {"weight_bits": 2, "granularity": "per_block", "block_size": 16, "scheme": "asymmetric",
            "rounding": "gptq", "kernel": "matmulnbits"}
    matmuls = [f"blocks.{i}.{n}" for i in (0, 1) for n in ("attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                            "attn.out_proj", "ffn.fc1", "ffn.fc2")]
    genome = tmp_path / "gptq.yaml"
    genome.write_text(yaml.safe_dump({"default": {"weight_bits": 8, "activation_bits": 8},
                                      "layers": dict.fromkeys(matmuls, gene)}))
    proc = qae("finetune", str(tuned_run), "--genome", str(genome), *TUNE)
    assert proc.returncode == 0, proc.stderr
    archive = Archive.open_existing(tuned_run / "archive.sqlite", readonly=True)
    try:
        added = archive.added()
        given = next(h for h, r in added.items() if r["kind"] == "given" and r["genome_file"] == str(genome))
        child, prov = next((h, p) for h, p in archive.finetuned().items() if p["parent"] == given)
        cands = {c.hash: c for c in archive.candidates("arm-neon-a76")}
    finally:
        archive.close()
    # the fake-quantized start is the GPTQ candidate itself (270 validation images: one image is 1/270)
    assert prov["parent_validation_fake_quant"] == pytest.approx(cands[given].values["accuracy"].value,
                                                                 abs=1 / 270 + 1e-9)
    scales = json.loads((tuned_run / prov["model"] / "scales.json").read_text())
    for name in matmuls:
        block = np.asarray(scales[name]["weight_scale"])
        assert block.ndim == 2 and block.shape[1] > 1, (name, block.shape)
    assert cands[child].values["accuracy"].value >= cands[given].values["accuracy"].value


def test_kill_9_then_rerun_gives_the_uninterrupted_candidate(tuned_run: Path, tmp_path: Path) -> None:
    """A fine-tune killed with SIGKILL and run again continues from its checkpoint and ends with the
    weights (hence the candidate hash) of an uninterrupted fine-tune of the same parent."""
    import os
    import shutil
    import signal
    import time

    front = json.loads((tuned_run / "front.json").read_text())["targets"]["arm-neon-a76"]["points"]
    pick = next(p["id"] for p in front if not p["finetuned"])
    runs = {name: tmp_path / name for name in ("whole", "killed")}
    for path in runs.values():
        shutil.copytree(tuned_run, path, ignore=shutil.ignore_patterns("finetune", "finetuned", ".lock"))
    args = ["--pick", pick, "--steps", "150", "--checkpoint-every", "5", "--eval-every", "50", "--seed", "9"]
    assert qae("finetune", str(runs["whole"]), *args).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "finetune", str(runs["killed"]), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((runs["killed"] / "finetune").glob("*.pt")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((runs["killed"] / "finetune").glob("*.pt")), "no checkpoint was written before the kill"
    assert qae("finetune", str(runs["killed"]), *args).returncode == 0

    def child(run: Path) -> tuple[str, dict]:  # type: ignore[type-arg]
        archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
        try:
            return next((h, p) for h, p in archive.finetuned().items() if p["parent"] == pick and p["seed"] == 9)
        finally:
            archive.close()

    (h_whole, whole), (h_killed, killed) = child(runs["whole"]), child(runs["killed"])
    assert killed["resumed_from"] > 0
    assert h_whole == h_killed and whole["weights_sha256"] == killed["weights_sha256"]
    assert whole["loss_curve"] == killed["loss_curve"]


def test_search_with_finetune_front_without_torch_stops_before_searching(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = ("import sys; sys.modules['torch'] = None; from harness.cli.main import main; "
            f"sys.exit(main(['search', 'builtin:digits-vit', '--profile', 'arm-neon-a76', '--finetune-front', '1', "
            f"'--out', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "qae[train]")
    assert not (out / "archive.sqlite").exists()
