"""Console messages of a search whose only device refuses its host key (issue 13, finding 13): the
trust instructions are shown once, no "moving its job" when no device is healthy, and the
measurements left queued are counted with the resume command."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import yaml

from harness.run.config import SearchConfig
from harness.run.search import run_search
from tests.sshd import ParamikoServer, make_keys


def test_hostkey_failure_explains_once_and_counts_what_waits(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    server = ParamikoServer(keys, getpass.getuser())
    (tmp_path / "known_hosts").write_text("")  # the device's host key is not trusted yet
    device = {
        "name": "untrusted", "transport": "ssh", "host": "127.0.0.1", "port": server.port,
        "user": getpass.getuser(), "key_file": str(keys.user_key_file), "known_hosts": str(tmp_path / "known_hosts"),
        "python": sys.executable, "cache_dir": str(tmp_path / "agent"), "sensor": "none", "profile": "host-cpu",
        "connect_timeout_s": 5,
    }
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    cfg = SearchConfig(
        model="builtin:digits-vit", profiles=[], generations=2, population=6, seed=1, devices=["untrusted"],
        devices_file=str(tmp_path / "devices.yaml"),
        hil={"per_generation": 2, "runs": 3, "min_seconds": 0.01, "warmup_seconds": 0.0, "accuracy_points": 0},
    )
    said: list[str] = []
    run_search(cfg, tmp_path / "run", say=said.append).close()
    text = "\n".join(said)
    assert not any("moving its job to a healthy device" in line for line in said), text
    explained = [line for line in said if "ssh-keyscan" in line]  # the trust instructions, once
    assert len(explained) == 1, text
    queued = [line for line in said if "measurements still queued" in line]
    assert len(queued) == 1 and f"qae search --resume {tmp_path / 'run'}" in queued[0], text
