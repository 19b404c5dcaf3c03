"""Configuration of SURM-LoRA: a structured weight update ΔW on frozen linear layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from ..structures import STRUCTURES, rank_options
from .peft_type import SURM_PEFT_TYPE


@dataclass
class SurmConfig(PeftConfig):
    """Configuration of a :class:`~surm_nlp.lora.SurmModel`.

    Every targeted layer y = W₀x + b becomes y = W₀x + b + α·S(dropout(x)), so ΔW = α·S with S an
    (out × in) structured matrix from :mod:`surm_nlp.structures`. Parameters per layer
    (m = out, n = in, N = max(m, n)): circulant N, toeplitz m + n − 1, symmetric_toeplitz N,
    kronecker m₁n₁ + m₂n₂, ldr 2·rank·N, lowrank rank·(m + n).

    ``init_weights=True`` (default) starts at ΔW = 0 with non-zero gradients: the structures that
    are linear in their parameters start at zero, the bilinear ones zero one factor (LoRA's B = 0).
    ``lowrank`` with ``alpha = lora_alpha / r`` is exactly PEFT's LoRA.
    """

    structure: str = field(default="circulant", metadata={"help": f"One of {', '.join(STRUCTURES)}."})
    rank: int | None = field(
        default=None,
        metadata={"help": "Rank of `lowrank` (default 8) or displacement rank of `ldr` (default 1)."},
    )
    alpha: float = field(default=1.0, metadata={"help": "Scaling α of ΔW = α·S."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of S."})
    init_weights: bool = field(default=True, metadata={"help": "Start at ΔW = 0 (False: random S, for tests)."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names or a regex to adapt, e.g. ['query', 'value'] or ['q_proj', 'v_proj']. "
            "Default: the attention query/value projections for known architectures."
        },
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Module names to skip."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing weight as (in, out), e.g. GPT-2's Conv1D."}
    )
    bias: Literal["none", "all", "surm_only"] = field(default="none", metadata={"help": "Which biases train."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full, e.g. ['classifier']."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices to adapt."})
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list, used with `layers_to_transform`."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SURM_PEFT_TYPE
        rank_options(self.structure, self.rank)  # raises on an unknown structure or a rank it does not take
        if self.dropout < 0 or self.dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.target_modules, str) and (self.layers_to_transform or self.layers_pattern):
            raise ValueError("layers_to_transform and layers_pattern need target_modules as a list, not a regex")

    def structure_kwargs(self) -> dict[str, int]:
        """Options passed to :func:`~surm_nlp.structures.make_structure` for every layer."""
        return rank_options(self.structure, self.rank)
