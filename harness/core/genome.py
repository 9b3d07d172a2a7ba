"""Genomes: one precision gene per quantizable layer, with a canonical form and a hash.

A genome file (YAML or JSON) has a ``default`` gene and a ``layers`` mapping of per-layer
overrides; a field a layer omits takes the default's, and a field the default omits takes
``BASE_GENE``'s. Resolution is total: every layer of the model gets a full gene, so two files that
mean the same quantization have the same canonical form and the same hash.

Normalisation (so the hash is about what gets built, not how it was spelled):
- ``weight_bits: fp`` leaves the layer unquantized, so its activation, scheme and granularity are
  reset to the base values.
- An embedding Gather has no activation input (its input is indices): its activation is ``fp``.
- A Conv with ``dynamic`` activations is quantized per tensor: ONNX Runtime's dynamic quantizer
  builds ConvInteger with one weight scale.
- An LSTM or GRU is weight-only: its activation is ``fp`` (see ``WEIGHT_ONLY_OPS``).
- Block-wise weights are weight-only: with ``per_block`` (kernels ``matmulnbits`` (ONNX Runtime's
  com.microsoft MatMulNBits), ``gather_block`` (GatherBlockQuantized) and block-wise QDQ) the
  activation is ``fp``. For QDQ this is ONNX Runtime 1.32's doing: its CPU optimizer fuses a static
  activation's Q/DQ and a block-wise weight DequantizeLinear into MatMulIntegerToFloat, which
  ignores ``block_size`` (int8-stored weights fail to run; int4 weights with 16-bit activations
  give other outputs than the unoptimized graph), and MatMulInteger takes no blocks. ``accuracy_level: 0`` is
  MatMulNBits' "unset", the same as no level. An unquantized layer takes the base kernel, block
  size, level and rounding.

Fields added by issue 15 (``granularity: per_block`` with ``block_size``, ``kernel``,
``accuracy_level``, ``rounding``) are left out of ``Gene.to_dict()`` at their defaults, so a genome
that does not use them keeps the canonical form and hash it had before they existed. What combines
with what (each refusal is a one-line GenomeError naming the layer, op and allowed values):
- ``per_block`` needs a ``block_size`` (16, 32, 64, 128) and a 2-D weight (MatMul, Gemm, or an
  embedding Gather through ``gather_block``); a ``block_size`` needs ``per_block``.
- ``kernel: matmulnbits`` is for MatMul only, ``gather_block`` for an embedding Gather only; both
  need ``per_block`` and weight_bits 2, 4 or 8 (what ONNX Runtime 1.32's CPU kernels unpack).
- ``accuracy_level`` (0, 1, 2, 4) only with ``matmulnbits``.
- ``rounding`` other than ``rtn`` (``mse``, ``hqq``, ``gptq``; see ``harness.quant.rounding``) needs
  weights of 2 to 8 bits with scheme symmetric or asymmetric (a power-of-two scale is not the
  optimiser's to choose), and is not for LSTM/GRU; ``gptq`` needs the layer's inputs, so it is for
  MatMul and Gemm only, per channel or per block. It applies with dynamic activations too: the
  weights are rounded by qae either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Union

import yaml

from harness.core.errors import GenomeError, InputError
from harness.core.inputs import load_structured, read_text

Bits = Union[int, str]  # noqa: UP007 (a runtime alias: Python 3.10 needs Union here)

WEIGHT_BITS: tuple[Bits, ...] = (2, 3, 4, 5, 6, 8, 16, "fp")
ACTIVATION_BITS: tuple[Bits, ...] = (2, 3, 4, 5, 6, 8, 16, "dynamic", "fp")
SCHEMES = ("symmetric", "asymmetric", "power_of_two")
GRANULARITIES = ("per_channel", "per_tensor", "per_block")
#: Block sizes along a weight's input (K) axis; ONNX Runtime wants a power of two >= 16.
BLOCK_SIZES = (16, 32, 64, 128)
#: How a layer's quantized weights run: ``qdq`` (ONNX QDQ or ONNX Runtime's dynamic quantizer),
#: ``matmulnbits`` (com.microsoft MatMulNBits), ``gather_block`` (com.microsoft GatherBlockQuantized).
KERNELS = ("qdq", "matmulnbits", "gather_block")
#: The op each non-QDQ kernel replaces.
KERNEL_OPS = {"matmulnbits": ("MatMul",), "gather_block": ("Gather",)}
#: Weight widths each packed kernel runs (ONNX Runtime 1.32 CPU: MatMulNBits bits 2/4/8;
#: GatherBlockQuantized on uint8 data with bits 2/4/8, packed along the last axis).
KERNEL_BITS: dict[str, tuple[int, ...]] = {"matmulnbits": (2, 4, 8), "gather_block": (2, 4, 8)}
#: MatMulNBits ``accuracy_level``: 0 unset, 1 fp32, 2 fp16, 4 int8 (A quantized per block).
ACCURACY_LEVELS = (0, 1, 2, 4)
ROUNDINGS = ("rtn", "mse", "hqq", "gptq")
#: Widths ONNX has a real integer type for; the others are emulated in int8 storage.
NATIVE_BITS = (4, 8, 16)
#: The fields every gene file has always had (a gene's first four, and its positional order).
BASE_FIELDS = ("weight_bits", "activation_bits", "scheme", "granularity")
#: Issue 15's fields: omitted from ``Gene.to_dict()`` at their defaults (old genomes keep their hash).
EXTRA_FIELDS = ("block_size", "kernel", "accuracy_level", "rounding")
FIELDS = BASE_FIELDS + EXTRA_FIELDS
#: Layers quantized weight-only. ONNX Runtime has no integer LSTM/GRU kernel and its QDQ quantizer
#: leaves these ops float, so qae stores W and R as integers with a DequantizeLinear feeding the op:
#: the weights shrink, the recurrence runs in float, and there is no activation precision to choose
#: (``activation_bits`` becomes ``fp``, also for ``dynamic``). The weight width keeps the gene's value:
#: 8 and 4 bits are stored natively (int8 / int4), 16 in int16, and 2/3/5/6 are emulated in int8
#: storage like any other weight, since qae writes that DequantizeLinear itself.
WEIGHT_ONLY_OPS = ("LSTM", "GRU")
#: A genome file's size cap: a full genome of 10,000 layers with long names is about 1.3 MB, so a
#: larger file is not a genome (and parsing tens of MB of YAML takes minutes and gigabytes).
GENOME_MAX_BYTES = 2 * 1024 * 1024
#: A genome nests three levels (layers -> name -> gene); anything much deeper is not a genome.
GENOME_MAX_DEPTH = 16


@dataclass(frozen=True)
class Gene:
    """The precision of one layer. ``activation_bits='dynamic'`` quantizes to 8 bits at run time."""

    weight_bits: Bits = 8
    activation_bits: Bits = 8
    scheme: str = "symmetric"
    granularity: str = "per_channel"
    block_size: int | None = None
    kernel: str = "qdq"
    accuracy_level: int | None = None
    rounding: str = "rtn"

    @property
    def quantized(self) -> bool:
        return self.weight_bits != "fp"

    @property
    def static_activation(self) -> bool:
        return isinstance(self.activation_bits, int)

    @property
    def dynamic(self) -> bool:
        return self.activation_bits == "dynamic"

    @property
    def weight_storage_bits(self) -> int:
        """Bits per weight in the ONNX file (emulated widths are stored in int8)."""
        if not self.quantized:
            return 32
        bits = int(self.weight_bits)
        if self.kernel != "qdq":  # packed at their width, several weights to a byte
            return bits
        if self.dynamic:  # MatMulInteger / ConvInteger take 8-bit weights only
            return 8
        return bits if bits in NATIVE_BITS else 8

    @property
    def emulated(self) -> bool:
        """True when a width is held in a wider storage type than its nominal one."""
        if not self.quantized:
            return False
        if self.weight_storage_bits != int(self.weight_bits):
            return True
        return self.static_activation and int(self.activation_bits) not in NATIVE_BITS

    def to_dict(self) -> dict[str, Any]:
        """The gene's fields, issue 15's left out at their defaults (see the module docstring)."""
        full = asdict(self)
        return {k: v for k, v in full.items() if k in BASE_FIELDS or v != _EXTRA_DEFAULTS[k]}

    def full_dict(self) -> dict[str, Any]:
        return asdict(self)


BASE_GENE = Gene()
_EXTRA_DEFAULTS: dict[str, Any] = {k: getattr(BASE_GENE, k) for k in EXTRA_FIELDS}


def _parse_bits(value: Any, allowed: tuple[Bits, ...], where: str, field: str) -> Bits:
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, str):
        value = value.strip().lower()
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise GenomeError(f"{where}: {field} {value!r} is not supported: use one of {choices}")
    return value


def parse_gene(data: Any, base: Gene, where: str) -> Gene:
    """Fill a (partial) gene mapping from ``base``; errors name ``where`` and the allowed values."""
    if data is None:
        return base
    if not isinstance(data, Mapping):
        raise GenomeError(f"{where}: a gene must be a mapping with fields {', '.join(FIELDS)}")
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise GenomeError(f"{where}: unknown field {sorted(unknown)[0]!r}: use {', '.join(FIELDS)}")
    gene = base
    if "weight_bits" in data:
        gene = replace(gene, weight_bits=_parse_bits(data["weight_bits"], WEIGHT_BITS, where, "weight_bits"))
    if "activation_bits" in data:
        gene = replace(
            gene,
            activation_bits=_parse_bits(data["activation_bits"], ACTIVATION_BITS, where, "activation_bits"),
        )
    for field, allowed in (("scheme", SCHEMES), ("granularity", GRANULARITIES), ("kernel", KERNELS),
                           ("rounding", ROUNDINGS)):
        if field in data:
            value = str(data[field]).strip().lower()
            if value not in allowed:
                raise GenomeError(f"{where}: {field} {data[field]!r} is not supported: use one of {', '.join(allowed)}")
            gene = replace(gene, **{field: value})  # type: ignore[arg-type]
    for field, allowed_ints in (("block_size", BLOCK_SIZES), ("accuracy_level", ACCURACY_LEVELS)):
        if field in data:
            number = _parse_optional_int(data[field], allowed_ints, where, field)
            gene = replace(gene, **{field: number})  # type: ignore[arg-type]
    return gene


def _parse_optional_int(value: Any, allowed: tuple[int, ...], where: str, field: str) -> int | None:
    """An integer from ``allowed``, or None (``null`` / ``none`` in a file: the field unset)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    parsed = _parse_bits(value, allowed, where, field)  # type: ignore[arg-type]
    return int(parsed)


def normalise(gene: Gene, op_type: str, where: str) -> Gene:
    """Bring a gene to the one form that means what will be built (see the module docstring)."""
    if not gene.quantized:
        return Gene("fp", "fp", BASE_GENE.scheme, BASE_GENE.granularity)
    if gene.accuracy_level == 0:  # MatMulNBits' "unset": one spelling for one meaning
        gene = replace(gene, accuracy_level=None)
    _check_kernel(gene, op_type, where)
    weight_only = op_type in ("Gather", *WEIGHT_ONLY_OPS) or gene.granularity == "per_block"
    if (weight_only or gene.kernel != "qdq") and gene.activation_bits != "fp":
        gene = replace(gene, activation_bits="fp")
    if gene.dynamic and op_type == "Conv" and gene.granularity != "per_tensor":
        gene = replace(gene, granularity="per_tensor")
    if gene.dynamic and int(gene.weight_bits) > 8:
        raise GenomeError(
            f"{where}: activation_bits dynamic needs weight_bits of 8 or fewer "
            f"(ONNX Runtime's integer kernels take 8-bit weights), got {gene.weight_bits}"
        )
    _check_rounding(gene, op_type, where)
    return gene


def layer_kernels(op_type: str) -> tuple[str, ...]:
    """What a layer of ``op_type`` can be built as: ``qdq`` (always), ``per_block`` QDQ weights
    (MatMul, Gemm), and the packed kernels whose op it is (``qae layers`` shows this)."""
    out = ["qdq"]
    if op_type in ("MatMul", "Gemm"):
        out.append("qdq per_block")
    out += [kernel for kernel, ops in KERNEL_OPS.items() if op_type in ops]
    return tuple(out)


def _check_kernel(gene: Gene, op_type: str, where: str) -> None:
    """The kernel, block and level choices that cannot be built for ``op_type`` (one-line errors)."""
    sizes = ", ".join(str(b) for b in BLOCK_SIZES)
    if gene.kernel != "qdq":
        if op_type not in KERNEL_OPS[gene.kernel]:
            ops = ", ".join(KERNEL_OPS[gene.kernel])
            raise GenomeError(f"{where}: kernel {gene.kernel} cannot run a {op_type} layer: it is for {ops} "
                              f"(use kernel qdq here)")
        if int(gene.weight_bits) not in KERNEL_BITS[gene.kernel]:
            bits = ", ".join(str(b) for b in KERNEL_BITS[gene.kernel])
            raise GenomeError(f"{where}: kernel {gene.kernel} on {op_type} runs weight_bits {bits}, "
                              f"got {gene.weight_bits}")
        if gene.granularity != "per_block":
            raise GenomeError(f"{where}: kernel {gene.kernel} on {op_type} needs granularity per_block with a "
                              f"block_size ({sizes}), got {gene.granularity}")
    if gene.granularity == "per_block":
        if gene.block_size is None:
            raise GenomeError(f"{where}: granularity per_block needs a block_size: use one of {sizes}")
        if gene.kernel == "qdq" and op_type not in ("MatMul", "Gemm"):
            hint = " (an embedding table takes kernel gather_block)" if op_type == "Gather" else ""
            raise GenomeError(f"{where}: granularity per_block with kernel qdq is for MatMul and Gemm weights, "
                              f"not {op_type}{hint}: use per_channel or per_tensor")
    elif gene.block_size is not None:
        raise GenomeError(f"{where}: block_size {gene.block_size} needs granularity per_block, "
                          f"got {gene.granularity}: drop block_size or use per_block")
    if gene.accuracy_level is not None and gene.kernel != "matmulnbits":
        raise GenomeError(f"{where}: accuracy_level is MatMulNBits' (kernel matmulnbits), got kernel {gene.kernel} "
                          f"on {op_type}: drop accuracy_level")


def _check_rounding(gene: Gene, op_type: str, where: str) -> None:
    if gene.rounding == "rtn":
        return
    if op_type in WEIGHT_ONLY_OPS:
        raise GenomeError(f"{where}: rounding {gene.rounding} is not available for {op_type} weights: use rtn")
    if int(gene.weight_bits) > 8:
        raise GenomeError(f"{where}: rounding {gene.rounding} is for weights of 2 to 8 bits, got "
                          f"{gene.weight_bits}: use rtn")
    if gene.rounding == "gptq" and op_type not in ("MatMul", "Gemm"):
        raise GenomeError(f"{where}: rounding gptq is for MatMul and Gemm weights (it needs their inputs), "
                          f"not {op_type}: use rtn, mse or hqq")
    if gene.rounding == "gptq" and gene.granularity == "per_tensor":
        raise GenomeError(f"{where}: rounding gptq needs granularity per_channel or per_block, got per_tensor: "
                          "use mse or hqq, or another granularity")
    if gene.scheme == "power_of_two":
        raise GenomeError(f"{where}: rounding {gene.rounding} chooses its own scales, which scheme power_of_two "
                          "fixes: use scheme symmetric or asymmetric, or rounding rtn")


class Genome:
    """A full assignment of genes to the layers of one model. Immutable by convention."""

    def __init__(self, default: Gene, genes: Mapping[str, Gene]) -> None:
        self.default = default
        self.genes: dict[str, Gene] = dict(genes)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, layers: Mapping[str, str], source: str = "genome") -> Genome:
        """Build from a parsed file; ``layers`` maps each layer name to its op type."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise GenomeError(f"{source}: a genome must be a mapping with 'default' and 'layers'")
        unknown = set(data) - {"default", "layers"}
        if unknown:
            raise GenomeError(f"{source}: unknown key {sorted(unknown)[0]!r}: a genome has 'default' and 'layers'")
        default = parse_gene(data.get("default"), BASE_GENE, f"{source}: default")
        overrides = data.get("layers") or {}
        if not isinstance(overrides, Mapping):
            raise GenomeError(f"{source}: 'layers' must map layer names to genes")
        for name in overrides:
            if name not in layers:
                near = _nearest(str(name), layers)
                hint = f" (did you mean {near!r}?)" if near else ""
                raise GenomeError(f"{source}: unknown layer {name!r}{hint}: `qae layers MODEL` lists the layer names")
        genes = {}
        for name, op_type in layers.items():
            gene = parse_gene(overrides.get(name), default, f"{source}: layer {name}")
            genes[name] = normalise(gene, op_type, f"{source}: layer {name}")
        return cls(default, genes)

    @classmethod
    def load(cls, path: str | Path, layers: Mapping[str, str]) -> Genome:
        """Read a genome file: size-capped, UTF-8, nesting-limited (``harness.core.inputs``), then checked."""
        path = Path(path)
        try:
            text = read_text(path, "genome", GENOME_MAX_BYTES)
            data = load_structured(text, f"genome file {path}", max_depth=GENOME_MAX_DEPTH)
        except GenomeError:
            raise
        except InputError as exc:  # the same one line, as the genome's own error type
            raise GenomeError(str(exc)) from None
        return cls.from_dict(data, layers, source=str(path))

    @classmethod
    def uniform(cls, gene: Gene, layers: Mapping[str, str]) -> Genome:
        return cls.from_dict({"default": gene.to_dict()}, layers)

    # -- views --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Gene:
        return self.genes[name]

    def __iter__(self) -> Iterable[str]:  # type: ignore[override]
        return iter(self.genes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Genome) and self.genes == other.genes

    def __hash__(self) -> int:
        return hash(self.hash)

    @property
    def emulated_layers(self) -> list[str]:
        return [name for name, gene in self.genes.items() if gene.emulated]

    @property
    def emulated(self) -> bool:
        return bool(self.emulated_layers)

    def canonical_json(self) -> str:
        """Every layer's full gene, sorted: what the hash is taken over."""
        body = {name: self.genes[name].to_dict() for name in sorted(self.genes)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The file form: the most common gene as default, and only the fields that differ."""
        counts: dict[Gene, int] = {}
        for gene in self.genes.values():
            counts[gene] = counts.get(gene, 0) + 1
        # Ties broken by the gene's JSON, so the file form is the same in every process.
        default = max(counts, key=lambda g: (counts[g], json.dumps(g.to_dict(), sort_keys=True)), default=self.default)
        base = default.full_dict()
        layers: dict[str, dict[str, Any]] = {}
        for name in self.genes:
            # against every field: a layer back at a default the file's default gene left is named
            diff = {k: v for k, v in self.genes[name].full_dict().items() if base[k] != v}
            if diff:
                layers[name] = diff
        return {"default": default.to_dict(), "layers": layers}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _nearest(name: str, candidates: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None
