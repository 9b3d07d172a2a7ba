"""A run: the search over a workload, hardware in the loop, calibration, and the archive.

- ``config``: ``SearchConfig``, objectives, budgets, the per-layer menu and baselines.
- ``evaluation``: host evaluation of candidates, predicted costs, objective vectors for the engine.
- ``cluster``: host evaluations as tasks of a Dask cluster (``--cluster local:N | ADDRESS``); the head records.
- ``seeds``: the layers' choices, sensitivity probes, seeded baselines and fallback genomes.
- ``search``: ``run_search``, one engine and one ``driver.Driver`` per target.
- ``hil``: device targets that measure candidates during the search and re-fit the cost model.
- ``calibrate``: drives a device through a suite of models and fits a profile to it.
- ``archive``: the SQLite archive of every candidate and value with its provenance.
- ``shapes``: the input shapes a predicting or measuring command uses (flag, data, model), never a silent 1.
- ``failures``: how many candidates of a target failed and the most common error, from the archive.
- ``finetune``: ``qae finetune``: fine-tune chosen candidates and enter the results in the archive.

May import: ``harness.core``, ``harness.quant``, ``harness.devices``, ``profiles`` and ``search``.
Never ``harness.report`` or ``harness.cli``.
"""
