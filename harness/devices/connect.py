"""``connect``: the transport a device's ``transport:`` names (local, ssh, simulated).

It lives apart from ``harness.devices.transport`` so that the base module never imports its
implementations: each implementation imports the base, and only this module knows them all.
"""

from __future__ import annotations

from typing import Any

from harness.devices.config import DeviceConfig
from harness.devices.local import LocalTransport
from harness.devices.simulated import SimulatedTransport
from harness.devices.ssh import SshTransport
from harness.devices.transport import DeviceError, Transport


def connect(device: DeviceConfig, **kw: Any) -> Transport:
    """A transport for ``device``; nothing is opened until the first call. ``kw`` goes to the
    transport (``fn=`` for a simulated device's measurement function)."""
    if device.transport == "local":
        return LocalTransport(device)
    if device.transport == "ssh":
        return SshTransport(device)
    if device.transport == "simulated":
        return SimulatedTransport(device, **kw)
    raise DeviceError("CONNECT", f"device {device.name!r} has unknown transport {device.transport!r}")
