"""What the cost model needs to know of a model, a layer and a genome, as structural protocols.

``profiles`` imports nothing of ``harness``: the host's ``LayerSpec``, ``Gene``, ``Genome`` and
``ModelInfo`` satisfy these protocols as they are, and so does any plain object with the same
attributes (a test's dataclass, a layer table read from JSON). Only reads happen through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class LayerLike(Protocol):
    """One quantizable layer: ``macs`` per inference at the shapes the model runs at (None: unknown,
    because the input shapes are unknown; the cost model then refuses to predict).

    Optional attributes read with ``getattr``: ``input_elements`` and ``output_elements`` (int or
    None), the elements of the layer's activation input and output per inference. Without them the
    cost model infers them from MACs and the weight shape (see ``costmodel.layer_io``). ``groups``
    (int, default 1): a Conv's group count, which decides whether a runtime without a grouped kernel
    for the layer's path pays per group (``costmodel.grouped_conv_us``)."""

    @property
    def name(self) -> str: ...
    @property
    def node_name(self) -> str: ...
    @property
    def op_type(self) -> str: ...
    @property
    def weight_shape(self) -> Sequence[int]: ...
    @property
    def params(self) -> int: ...
    @property
    def macs(self) -> int | None: ...
    @property
    def channel_axis(self) -> int: ...


class GeneLike(Protocol):
    """One layer's precision choice (``weight_bits`` / ``activation_bits`` may be ints or words).

    Optional attributes read with ``getattr`` (issue 15; absent means QDQ as before): ``kernel``
    (``qdq`` | ``matmulnbits`` | ``gather_block``), ``block_size`` (int or None, with granularity
    ``per_block``), ``accuracy_level`` (MatMulNBits' level, int or None) and ``scheme``
    (``asymmetric`` stores a zero point per block)."""

    @property
    def weight_bits(self) -> Any: ...
    @property
    def activation_bits(self) -> Any: ...
    @property
    def granularity(self) -> str: ...
    @property
    def quantized(self) -> bool: ...
    @property
    def static_activation(self) -> bool: ...
    @property
    def dynamic(self) -> bool: ...
    @property
    def weight_storage_bits(self) -> int: ...


class GenomeLike(Protocol):
    """A gene per layer name."""

    def __getitem__(self, name: str) -> GeneLike: ...
    @property
    def emulated_layers(self) -> list[str]: ...


class ModelLike(Protocol):
    """A loaded model: its graph, its layers and the static shape of every tensor it can resolve."""

    @property
    def proto(self) -> Any: ...
    @property
    def layers(self) -> Sequence[LayerLike]: ...
    def tensor_shapes(self) -> dict[str, list[int]]: ...
