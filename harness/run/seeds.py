"""The search space and the initial population: each layer's menu of genes, the per-layer
sensitivity probes, and the seeded baselines and fallback genomes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from harness.core.errors import GenomeError
from harness.core.genome import EXTRA_FIELDS, Gene, Genome, normalise
from harness.quant.workload import Workload
from harness.run.config import (
    BASELINE_TABLES,
    BASELINES,
    EMULATED_MENU,
    FALLBACK_BASE,
    FALLBACK_COUNTS,
    KERNEL_MENU,
    MENU,
    SearchConfig,
)
from harness.run.evaluation import HostEvaluator


def kernel_genes(layer: Any, cfg: SearchConfig, profile: Any) -> list[Gene]:
    """The block-quantized genes ``layer`` is offered on ``profile``'s target: each kernel the profile
    runs (``profiles.kernels_of``) whose op this layer is, at the widths and block sizes both the
    profile (``kernel_options``) and ``KERNEL_MENU`` list, at every accuracy level the profile says
    changes speed. Widths under 8 bits take the run's ``rounding``."""
    from profiles import kernel_options, kernels_of

    out: list[Gene] = []
    for kernel in sorted(kernels_of(profile) - {"qdq"}):
        menu, options = KERNEL_MENU.get(kernel), kernel_options(profile, kernel)
        if menu is None or layer.op_type not in menu["ops"] or len(layer.weight_shape) != 2:
            continue
        scheme = "asymmetric" if kernel == "gather_block" else cfg.scheme  # rows off zero cost nothing there
        for bits in [b for b in menu["bits"] if b in options.get("bits", [])]:
            for block in [b for b in menu["block_sizes"] if b in options.get("block_sizes", [])]:
                levels: list[int | None] = [*options.get("accuracy_levels", [])] or [None]
                for level in levels:
                    rounding = cfg.rounding if bits < 8 else "rtn"
                    gene = Gene(bits, "fp", scheme, "per_block", block_size=block, kernel=kernel,
                                accuracy_level=level or None, rounding=rounding)
                    try:
                        gene = normalise(gene, layer.op_type, layer.name)
                    except GenomeError:
                        if rounding == "rtn":
                            continue
                        # a rounding this op cannot take (GPTQ needs a MatMul's inputs): round to nearest
                        gene = normalise(replace(gene, rounding="rtn"), layer.op_type, layer.name)
                    if gene not in out:
                        out.append(gene)
    return out


def layer_choices(work: Workload, cfg: SearchConfig, profile: Any = None) -> list[list[Gene]]:
    """Per layer, the distinct genes the menu allows once normalised (a Gather has no activation),
    plus the block-quantized kernels ``profile``'s target runs (``kernel_genes``)."""
    menu = MENU + (EMULATED_MENU if cfg.emulated else ())
    out = []
    for layer in work.model.layers:
        genes: list[Gene] = []
        gather = layer.op_type == "Gather"
        # An embedding table has one row per token: per-row scales cost 4 bytes a row, which on a
        # 30k-token vocabulary outweighs what they buy, so per-tensor is offered there too. Its values
        # are rarely centred on zero (MiniLM's words span -0.51..1.05) and only the gathered rows are
        # dequantized, so an asymmetric grid costs nothing at run time: it is offered as well.
        # A Conv pays its per-channel scales twice (the weight's, and its int32 bias's), 8 bytes per
        # output channel: on small and depthwise convs that is a fifth of the layer at 8 bits, and
        # 8-bit weights are often fine per tensor, so a Conv is offered per-tensor too.
        conv = layer.op_type == "Conv"
        granularities = [cfg.granularity] + (["per_tensor"] if gather or conv else [])
        schemes = [cfg.scheme] + (["asymmetric"] if gather else [])
        for granularity in dict.fromkeys(granularities):
            for scheme in dict.fromkeys(schemes):
                for w, a in menu:
                    gene = normalise(Gene(w, a, scheme, granularity), layer.op_type, layer.name)
                    if gene not in genes:
                        genes.append(gene)
        if getattr(work, "runtime", "onnxruntime") == "litert":
            # ai-edge-quantizer builds what its policy lists per op (harness.quant.litert_quant): the menu
            # offers only those; the packed ONNX Runtime kernels are no LiteRT choice
            from harness.quant.litert_model import LiteModelInfo
            from harness.quant.litert_quant import layer_supported

            lite = work.model
            assert isinstance(lite, LiteModelInfo)
            genes = [g for g in genes if layer_supported(lite, layer.name, g)] or [Gene("fp", "fp")]
        elif profile is not None:
            genes += [g for g in kernel_genes(layer, cfg, profile) if g not in genes]
        out.append(genes)
    return out


def probe_genes(work: Workload, cfg: SearchConfig) -> list[dict[str, Any]]:
    """The sensitivity probes as genome files: one per layer, that layer at w4a8, the rest float."""
    return [
        {
            "default": {"weight_bits": "fp"},
            "layers": {layer.name: {"weight_bits": 4, "activation_bits": 8, "scheme": cfg.scheme,
                                    "granularity": cfg.granularity}},
        }
        for layer in work.model.layers
    ]


def layer_sensitivity(work: Workload, evaluator: HostEvaluator, cfg: SearchConfig) -> list[float]:
    """Per layer, 1 - mean cosine to FP32 with only that layer at w4a8 (HAWQ/AIMET-style probe).

    One host evaluation per layer, through the fitness cache; low means robust to lower precision.
    """
    probes = [Genome.from_dict(data, work.layer_ops) for data in probe_genes(work, cfg)]
    out = []
    for res in evaluator.evaluate(probes):
        cosine = res.get("mean_cosine")
        out.append(1.0 - float(cosine) if cosine is not None else 1.0)
    return out


def seed_values(work: Workload, cfg: SearchConfig, choices: Sequence[Sequence[Gene]],
                sensitivity: Sequence[float] | None) -> list[Any]:
    """Every seeded genome of a target's first generation, as choice values: the uniform baselines
    (and the fallbacks ``sensitivity`` orders), the per-tensor int8 CNN, the block-kernel seeds on
    the dynamic baseline, and ONNX Runtime's MatMulNBitsQuantizer as a user runs it (4-bit matmuls,
    everything else float)."""
    n = len(work.model.layers)
    baselines = baseline_values(work, cfg, sensitivity)
    plain = [per_layer(v, n) for v in baseline_values(work, cfg)]
    baselines += per_tensor_seed(plain[list(BASELINES).index("w8a8")], choices)
    baselines += kernel_seeds(plain[list(BASELINES).index(FALLBACK_BASE)], choices)
    baselines += kernel_seeds(plain[list(BASELINES).index("fp32")], choices, kernels=("matmulnbits",))
    return baselines


def _bits(v: Any) -> float:
    named = {"fp": 32.0, "dynamic": 8.0}
    return named[v] if v in named else float(v)


def kernel_seeds(base: Sequence[Any], choices: Sequence[Sequence[Gene]],
                 kernels: Sequence[str] = ("gather_block", "matmulnbits")) -> list[Any]:
    """Seeds from the block kernels a target runs: ``base`` (a baseline's per-layer values) with every
    embedding table block-quantized (GatherBlockQuantized, the narrowest width offered at its
    smallest block: only the gathered rows are dequantized, so it costs little time), then the same
    with the matmuls' narrowest MatMulNBits gene too (``kernels`` says which, in order). Empty when
    the target offers none of them."""
    from search.space import PerLayer

    def narrowest(genes: Sequence[Gene], kernel: str) -> Gene | None:
        offered = [g for g in genes if g.kernel == kernel]
        return min(offered, key=lambda g: (int(g.weight_bits), g.block_size or 0, g.accuracy_level or 0),
                   default=None)

    out: list[Any] = []
    values = list(base)
    for kernel in kernels:
        changed = False
        for i, genes in enumerate(choices):
            gene = narrowest(genes, kernel)
            if gene is not None:
                values[i], changed = gene_value(gene), True
        if changed:
            out.append(PerLayer(tuple(values)))
    return out


def per_layer(value: Any, n: int) -> list[Any]:
    """A seed's choice value per layer: a ``PerLayer``'s own, or one value repeated ``n`` times."""
    return list(value.values) if hasattr(value, "values") else [value] * n


def per_tensor_seed(base: Sequence[Any], choices: Sequence[Sequence[Gene]]) -> list[Any]:
    """``base`` (the w8a8 baseline's per-layer values) with per-tensor weights on every Conv whose
    menu offers them: the per-tensor int8 CNN that TFLite and Neural Compressor make by default,
    smaller by two scales per output channel. Empty when no layer offers it."""
    from search.space import PerLayer

    values, changed = list(base), False
    for i, genes in enumerate(choices):
        w, a, scheme, granularity = base[i][:4]
        if granularity == "per_tensor" or a in ("fp", "dynamic"):
            continue
        offered = next((g for g in genes if g.kernel == "qdq" and (g.weight_bits, g.activation_bits, g.scheme,
                                                                     g.granularity) == (w, a, scheme, "per_tensor")),
                       None)
        if offered is not None:
            values[i], changed = gene_value(offered), True
    return [PerLayer(tuple(values))] if changed else []


def baseline_values(work: Workload, cfg: SearchConfig, sensitivity: Sequence[float] | None = None) -> list[Any]:
    """The seeded baselines as choice values (a ``PerLayer`` where ``BASELINE_TABLES`` gives embedding
    tables their own grid: ``w8-dynamic`` is then ONNX Runtime's ``quantize_dynamic`` as a user runs it).

    With ``sensitivity`` (one score per layer, high = sensitive), fallback genomes follow it: the
    ``FALLBACK_BASE`` baseline with its ``FALLBACK_COUNTS`` most sensitive layers reading float activations
    over their int8 weights (the same bytes; what accuracy-driven tuning does when it excludes
    nodes from activation quantization, one step of it per genome).
    """
    from search.space import PerLayer

    layers = work.model.layers
    out: list[Any] = []
    dynamic: list[tuple[Any, ...]] = []
    for name, (w, a) in BASELINES.items():
        value = (w, a, cfg.scheme, cfg.granularity)
        per_layer = [value] * len(layers)
        if name in BASELINE_TABLES:
            table = gene_value(normalise(Gene(w, a, *BASELINE_TABLES[name]), "Gather", "embedding"))
            per_layer = [table if lay.op_type == "Gather" else value for lay in layers]
        out.append(PerLayer(tuple(per_layer)) if per_layer != [value] * len(layers) else value)
        if name == FALLBACK_BASE:
            dynamic = per_layer
    if sensitivity is None or not dynamic:
        return out
    # an embedding table reads indices: it has no activation to keep in float
    order = [i for i in sorted(range(len(layers)), key=lambda i: (-sensitivity[i], i)) if dynamic[i][1] != "fp"]
    counts = sorted({min(len(order), int(c) if c > 0 else math.ceil(-c * len(order))) for c in FALLBACK_COUNTS} - {0})
    for count in counts:
        values = list(dynamic)
        for i in order[:count]:
            w, _, scheme, granularity = dynamic[i][:4]
            values[i] = gene_value(normalise(Gene(w, "fp", scheme, granularity), layers[i].op_type, layers[i].name))
        out.append(PerLayer(tuple(values)))
    return out


def choice_distance(a: Any, b: Any) -> float:
    """How far two genes are apart, so a uniform baseline maps a layer lacking it to its nearest gene
    (an embedding Gather has no activation choice: w8a8 there means 8-bit weights, float output)."""
    w = abs(np.log2(_bits(a[0])) - np.log2(_bits(b[0])))
    act = abs(np.log2(_bits(a[1])) - np.log2(_bits(b[1]))) + (
        0.0 if (a[1] == "dynamic") == (b[1] == "dynamic") else 0.5
    )
    # the issue-15 fields ride as (field, value) pairs after the four base ones: each that differs is one step
    extra = len(set(a[4:]) ^ set(b[4:])) / 2
    return float(2 * w + act + (a[2] != b[2]) + (a[3] != b[3]) + extra)


def gene_value(gene: Gene) -> tuple[Any, ...]:
    """A gene as a search-space value: its four base fields, then ``(field, value)`` pairs for the
    issue-15 fields that differ from their defaults (``Gene.to_dict``'s rule). A gene that uses none
    of them stays the 4-tuple it always was, so earlier runs' spaces (and their fingerprints) decode
    as before; ``harness.run.evaluation.layers_dict`` reads both forms."""
    extras = tuple((k, v) for k, v in gene.to_dict().items() if k in EXTRA_FIELDS)
    return (gene.weight_bits, gene.activation_bits, gene.scheme, gene.granularity, *extras)


