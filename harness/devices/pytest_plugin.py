"""pytest plugin: ``pytest --qae-devices devices.yaml`` validates real phones and boards.

With the option, the shipped suite (``harness/devices/validation.py``) is collected and run once per
device in the file (``--qae-device NAME`` narrows it). Without it, the suite's tests are skipped with
a reason wherever they are collected. Registered as the ``qae`` entry point in ``pytest11``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parent / "validation.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qae", "qae device validation")
    group.addoption("--qae-devices", metavar="FILE", help="devices.yaml whose devices to validate")
    group.addoption("--qae-device", action="append", default=[], metavar="NAME",
                    help="validate only these devices (repeatable)")
    group.addoption("--qae-max-clock-offset", type=float, default=2.0, metavar="S",
                    help="largest clock offset accepted between host and device (default 2 s)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--qae-devices") and str(SUITE) not in config.args:
        config.args.append(str(SUITE))  # an explicit path: collected whatever its file name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qae_device" not in metafunc.fixturenames:
        return
    path = metafunc.config.getoption("--qae-devices")
    if not path:
        metafunc.parametrize("qae_device", [pytest.param(None, marks=pytest.mark.skip(
            reason="device validation needs --qae-devices devices.yaml"))])
        return
    from harness.devices.config import load_devices

    devices = load_devices(path)
    names = metafunc.config.getoption("--qae-device") or [n for n in devices if n != "local"] or ["local"]
    metafunc.parametrize("qae_device", [devices[n] for n in names], ids=names, scope="module")
