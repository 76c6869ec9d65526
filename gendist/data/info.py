"""What a model needs to know of its data, read from the shard manifest (or a data set's own header)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataInfo:
    """Kind and shape of one sample, plus what evaluation uses (mixture modes).

    `domain_b` describes the second domain of unpaired two-domain data (CycleGAN), None otherwise.
    """

    kind: str  # "points" or "images"
    sample_shape: tuple[int, ...]
    modes: list[list[float]] | None = None
    mode_std: float | None = None
    extras: dict = field(default_factory=dict)
    domain_b: "DataInfo | None" = None
    num_classes: int | None = None  # labelled data: labels are 0 .. num_classes - 1 (from the manifest)
