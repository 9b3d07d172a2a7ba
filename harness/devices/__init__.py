"""Devices: the inventory (devices.yaml), the transports that reach a device's agent, the pool.

- ``config``: ``DeviceConfig`` and devices.yaml parsing.
- ``transport``: the ``Transport`` interface, the agent protocol client (``AgentTransport``) and the
  typed records and errors; ``local``, ``ssh`` and ``simulated`` implement it; ``connect`` picks one.
- ``pool``: device health and a pool that hands a lost device's jobs to the others.
- ``validation`` and ``pytest_plugin``: the shipped validation suite (``pytest --qae-devices FILE``).

May import: ``harness.core`` and ``profiles`` (a simulated device answers from a cost model). Never
``harness.quant``, ``harness.run``, ``harness.report``, ``harness.cli`` or ``search``.
"""
