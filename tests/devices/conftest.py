"""Fixtures the device tests share."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sshd import ParamikoServer, make_keys, ssh_device, write_known_hosts


@pytest.fixture
def paramiko_server(tmp_path: Path) -> Iterator[tuple[ParamikoServer, Any]]:
    """An in-process paramiko SSH server on 127.0.0.1 and a device that reaches it with verified keys."""
    keys = make_keys(tmp_path / "keys")
    server = ParamikoServer(keys, user=getpass.getuser(), env={"HOME": str(tmp_path)})
    kh = write_known_hosts(tmp_path / "known_hosts", server.port, keys.host_key)
    yield server, ssh_device(server.port, keys, kh, tmp_path / "cache")
    server.stop()
