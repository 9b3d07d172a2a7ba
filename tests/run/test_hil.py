"""Hardware in the loop end to end: two loopback SSH devices running the real agent and one simulated
device, one SSH server killed mid-run; nothing lost, nothing measured twice."""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from harness.quant.exact import u8s8_saturates
from harness.run.archive import Archive
from harness.run.config import SearchConfig
from harness.run.search import run_search
from tests.sshd import OpenSshServer, ParamikoServer, have_sshd, make_keys, write_known_hosts


def _servers(root: Path, n: int) -> list[object]:
    import getpass

    keys = make_keys(root / "keys")
    servers: list[object] = []
    for i in range(n):
        if have_sshd():
            servers.append(OpenSshServer(root / f"sshd{i}", keys))
        else:  # the in-process paramiko server still runs real SSH and the real agent
            servers.append(ParamikoServer(keys, getpass.getuser()))
    return [keys, *servers]


def test_search_with_two_ssh_devices_and_a_simulated_one_survives_a_lost_device(tmp_path: Path) -> None:
    keys, server_a, server_b = _servers(tmp_path, 2)
    devices = []
    for name, server in (("hil-ssh-a", server_a), ("hil-ssh-b", server_b)):
        known = write_known_hosts(tmp_path / f"known_{name}", server.port, keys.host_key)  # type: ignore[attr-defined]
        devices.append(
            {
                "name": name,
                "transport": "ssh",
                "host": "127.0.0.1",
                "port": server.port,  # type: ignore[attr-defined]
                "user": __import__("getpass").getuser(),
                "key_file": str(keys.user_key_file),  # type: ignore[attr-defined]
                "known_hosts": str(known),
                "python": sys.executable,
                "cache_dir": str(tmp_path / "agent"),
                "sensor": "none",
                "profile": "host-cpu",
                "connect_timeout_s": 5,
            }
        )
    devices.append(
        {
            "name": "hil-sim",
            "transport": "simulated",
            "profile": "arm-neon-a76",
            "simulation": {"noise": 0.05, "seed": 1},
        }
    )
    devices_file = tmp_path / "devices.yaml"
    devices_file.write_text(yaml.safe_dump({"devices": devices}))

    out = tmp_path / "run"
    cfg = SearchConfig(
        model="builtin:digits-vit",
        profiles=[],
        generations=4,
        population=8,
        seed=5,
        devices=["hil-ssh-a", "hil-ssh-b", "hil-sim"],
        devices_file=str(devices_file),
        hil={"per_generation": 3, "runs": 5, "min_seconds": 0.05, "warmup_seconds": 0.05, "accuracy_points": 2},
    )
    said: list[str] = []
    killed: list[bool] = []

    def on_progress(step) -> None:  # type: ignore[no-untyped-def]
        if step.target == "hil-ssh-a+hil-ssh-b" and step.generation == 2 and not killed:
            server_a.stop()  # type: ignore[attr-defined]
            killed.append(True)

    archive = run_search(cfg, out, on_progress=on_progress, say=said.append)
    assert killed
    ssh_group, sim = "hil-ssh-a+hil-ssh-b", "hil-sim"
    assert sorted(archive.targets()) == sorted([ssh_group, sim])
    for target in (ssh_group, sim):
        cands = archive.candidates(target)
        history = archive.history(target)
        assert len(cands) == history[-1]["evaluations"] == len({c.hash for c in cands})  # every candidate once
    from harness.report.html import build_report

    archive.close()
    build_report(out)
    fronts = json.loads((out / "front.json").read_text())["targets"]
    for target, source in ((ssh_group, "measured"), (sim, "simulated")):
        points = fronts[target]["points"]
        assert points and all(p["objectives"]["latency"]["source"] == source for p in points), target
    survivors = {p["objectives"]["latency"]["device"] for p in fronts[ssh_group]["points"]}
    assert "hil-ssh-b" in survivors
    with sqlite3.connect(str(out / "archive.sqlite")) as con:
        twice = con.execute(
            "SELECT COUNT(*) FROM (SELECT target, hash, COUNT(*) n FROM value_log WHERE source IN "
            "('measured', 'simulated') AND objective = 'latency' GROUP BY target, hash HAVING n > 1)"
        ).fetchone()[0]
        lost = con.execute(
            "SELECT COUNT(*) FROM events WHERE device = 'hil-ssh-a' AND kind = 'DEVICE_FAILED'"
        ).fetchone()[0]
    assert twice == 0
    on_device = Archive(out / "archive.sqlite")
    ssh_acc = on_device.device_accuracy(ssh_group)
    assert len(ssh_acc) == 2 and all(r["device"] == "hil-ssh-b" and r["accuracy"] is not None for r in ssh_acc.values())
    # The loopback device runs ONNX Runtime on this CPU as it is: where its u8s8 kernels saturate (x86
    # without VNNI) the device's accuracy is the saturated one and the host's the exact one, so the
    # device is checked against the same file run by plain ONNX Runtime here, and against the host's
    # score where the two must agree.
    raw = _plain_ort_accuracy(cfg, on_device, ssh_group, list(ssh_acc))
    assert all(abs(r["accuracy"] - raw[h]) < 1e-9 for h, r in ssh_acc.items())  # same runtime, same bits
    if not u8s8_saturates():
        assert all(abs(r["accuracy"] - r["host_accuracy"]) < 1e-9 for r in ssh_acc.values())
    assert {r["error_kind"] for r in on_device.device_accuracy(sim).values()} == {"UNSUPPORTED"}
    on_device.close()
    assert lost >= 1 and any("hil-ssh-a" in line for line in said)
    page = (out / "report.html").read_text()
    assert "hil-ssh-a" in page and "DEVICE_FAILED" in page
    server_b.stop()  # type: ignore[attr-defined]


def _plain_ort_accuracy(cfg: SearchConfig, archive: Archive, target: str, hashes: list[str]) -> dict[str, float]:
    """Each candidate's accuracy with its model run as the agent runs it: ONNX Runtime's default session,
    no exact-int8 rewrite, the first output scored by the workload's plan."""
    import onnxruntime as ort

    from harness.core.genome import Genome
    from harness.quant.evaluate import output_names, run_all
    from harness.run.evaluation import open_workload

    work = open_workload(cfg)
    data = work.eval_data
    assert data is not None
    genomes = {c.hash: c.genome for c in archive.candidates(target)}
    first = output_names(work.model.proto)[0]
    out = {}
    for h in hashes:
        model = work.build(Genome.from_dict(genomes[h], work.layer_ops))
        sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = run_all(sess, data, [first])
        out[h] = work.score_outputs({first: outputs[first]})["accuracy"]
    return out


def test_online_fit_uses_the_new_measurements(tmp_path: Path) -> None:
    """The local device's cost model is re-fitted from the measurements that came in, and each
    prediction checked against a new measurement was made by a fit that did not include it."""
    out = tmp_path / "run"
    cfg = SearchConfig(
        model="builtin:digits-vit",
        profiles=[],
        generations=4,
        population=8,
        seed=2,
        devices=["local"],
        hil={
            "per_generation": 4,
            "runs": 5,
            "min_seconds": 0.05,
            "warmup_seconds": 0.05,
            "refit_min": 3,
            "accuracy_points": 0,
        },
    )
    archive = run_search(cfg, out, say=lambda m: None)
    fits = archive.fits("local")
    assert len(fits) >= 2
    assert [f["n"] for f in fits] == sorted({f["n"] for f in fits})  # each re-fit has more measurements
    for earlier, later in itertools.pairwise(fits):
        assert set(earlier["hashes"]) < set(later["hashes"])  # ... the earlier ones and the new ones
    gaps = archive.gaps("local")
    fitted_on = {f["calibration_id"]: set(f["hashes"]) for f in fits}
    checked = [g for g in gaps if g["calibration_id"] in fitted_on]
    assert checked
    for gap in checked:
        assert gap["hash"] not in fitted_on[gap["calibration_id"]]  # predicted before it was measured
        assert gap["fit_n"] == len(fitted_on[gap["calibration_id"]])
        assert gap["statistic"] == "p50"  # an online fit fits the measured p50s, and is compared with them
    # before any fit `local`'s own profile (host-cpu, public figures, no statistic named) predicted
    before = [g for g in gaps if g["calibration_id"] not in fitted_on]
    assert before and {g["statistic"] for g in before} == {"p50"}
    archive.close()


def test_a_profile_calibrated_on_min_latency_is_checked_against_the_measured_min(tmp_path: Path) -> None:
    """A device whose profile was calibrated on min latency (`qae calibrate`'s default): each prediction
    gap compares it with the measured min, which the measured value keeps beside its p50, and the per-layer
    measured times are scaled to that min too. Comparing with the p50 would call the profile 10-50 % fast."""
    from profiles import load_profile

    assert load_profile("host-cpu-local").latency_statistic == "min"
    devices_file = tmp_path / "devices.yaml"
    devices_file.write_text(yaml.safe_dump({"devices": [{"name": "here", "transport": "local",
                                                         "python": sys.executable, "profile": "host-cpu-local"}]}))
    cfg = SearchConfig(
        model="builtin:digits-vit", profiles=[], generations=1, population=4, seed=3, devices=["here"],
        devices_file=str(devices_file),
        hil={"per_generation": 3, "runs": 5, "min_seconds": 0.02, "warmup_seconds": 0.02, "accuracy_points": 0,
             "final_rounds": 0, "refit_min": 100},  # no online fit: the calibrated profile predicts throughout
    )
    archive = run_search(cfg, tmp_path / "run", say=lambda m: None)
    try:
        gaps = archive.gaps("here")
        latency = {c.hash: c.values["latency"] for c in archive.candidates("here")
                   if c.values["latency"].source == "measured"}
        rows = archive.layer_times("here")
    finally:
        archive.close()
    assert gaps and {g["statistic"] for g in gaps} == {"min"}
    for gap in gaps:
        measured = latency[gap["hash"]]
        assert gap["measured"] == measured.detail["min_ms"] <= measured.value  # the min, not the p50
    assert rows and {row["measured"]["statistic"] for row in rows.values()} == {"min"}


@pytest.mark.parametrize("bad", ["no-such-device"])
def test_unknown_device_is_a_one_line_error(tmp_path: Path, bad: str) -> None:
    from tests.cli.test_cli_model import assert_one_line_error, qae

    assert_one_line_error(
        qae("search", "builtin:digits-vit", "--device", bad, "--out", str(tmp_path / "r")), "unknown device"
    )


def test_repeated_measurements_are_each_kept_with_their_spread(tmp_path: Path) -> None:
    """--measure-repeat 2: every measured candidate has two fresh-process repeats in the archive, each
    with its runs and p50 interval; the latency is the median of their p50s, with their spread."""
    import numpy as np

    cfg = SearchConfig(
        model="builtin:digits-vit", profiles=[], generations=1, population=4, seed=1, devices=["local"],
        hil={"per_generation": 2, "runs": 5, "min_seconds": 0.02, "warmup_seconds": 0.02, "accuracy_points": 0,
             "final_rounds": 1, "repeats": 2},
    )
    archive = run_search(cfg, tmp_path / "run", say=lambda m: None)
    try:
        measured = [c.values["latency"] for c in archive.candidates("local")
                    if c.values.get("latency") and c.values["latency"].source == "measured"]
        assert measured
        for value in measured:
            repeats = value.detail["repeats"]
            assert len(repeats) == 2 and all(len(r["runs_ms"]) >= 5 and len(r["p50_ci95"]) == 2 for r in repeats)
            assert value.value == pytest.approx(float(np.median([r["p50_ms"] for r in repeats])))
            spread = value.detail["spread"]
            assert spread["n"] == 2 and spread["ok"] == (spread["spread_pct"] <= 5.0)
    finally:
        archive.close()


def test_a_bad_repeat_count_is_a_one_line_error(tmp_path: Path) -> None:
    from tests.cli.test_cli_model import assert_one_line_error, qae

    assert_one_line_error(qae("search", "builtin:digits-vit", "--device", "local", "--measure-repeat", "0",
                              "--out", str(tmp_path / "r")), "--measure-repeat >= 1")


def test_measured_candidates_keep_per_layer_times_and_the_report_shows_them(tmp_path: Path) -> None:
    """A search with --device local: each measurement's per-op profile is split by layer and kept beside the
    cost model's per-layer prediction, each labelled; the report draws them for a measured front point."""
    from harness.core.model import load_model
    from harness.report.html import build_report

    cfg = SearchConfig(
        model="builtin:digits-vit", profiles=[], generations=1, population=4, seed=2, devices=["local"],
        hil={"per_generation": 2, "runs": 5, "min_seconds": 0.02, "warmup_seconds": 0.02, "accuracy_points": 0,
             "final_rounds": 1},
    )
    out = tmp_path / "run"
    archive = run_search(cfg, out, say=lambda m: None)
    try:
        rows = archive.layer_times("local")
        measured = {c.hash for c in archive.candidates("local")
                    if c.values.get("latency") and c.values["latency"].source == "measured"}
    finally:
        archive.close()
    assert rows and set(rows) <= measured  # only measured candidates, each once
    names = [layer.name for layer in load_model("builtin:digits-vit").layers]
    for row in rows.values():
        assert row["device"] == "local"
        assert row["measured"]["source"] == "measured" and row["predicted"]["source"] == "predicted"
        assert row["measured"]["order"] == names and set(row["measured"]["layers"]) == set(names)
        assert all(v >= 0 for v in row["measured"]["layers"].values()) and sum(row["measured"]["layers"].values()) > 0
        assert set(row["predicted"]["layers"]) == set(names)
        assert row["measured"]["unattributed"] and row["measured"]["runs"] >= 5
        # the profile's shares, scaled to the timed statistic the prediction is (kernels run slower under the
        # profiler): min while the profile calibrated on min latency predicts, p50 after an online fit
        statistic = row["measured"]["statistic"]
        assert statistic in ("min", "p50") and row["measured"]["scaled_to"].startswith(f"timed {statistic},")
        assert row["measured"]["profiled_total_ms"] > 0
    build_report(out)
    assert (out / "layers_local.png").stat().st_size > 0
    assert "Per-layer latency of one measured front point" in (out / "report.html").read_text()
