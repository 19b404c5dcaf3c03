"""Configuration of a SURM adapter: a bottleneck block whose down/up projections are one structured d×d layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from adapters import BnConfig
from adapters.methods.modeling import Activation_Function_Class

from ..structures import rank_options


@dataclass(eq=False)
class SurmAdapterConfig(BnConfig):
    """A sequential adapter h ← h + scaling·f(S·h + b), S a d×d structured matrix (``structure``).

    Placement defaults to Houlsby et al.'s (after the attention block and after the feed-forward
    block, ``mh_adapter`` and ``output_adapter``); ``mh_adapter=False, original_ln_before=True``
    gives Pfeiffer's. At the start S = 0 and b = 0, so every adapter is the identity; the
    activation f must have f(0) = 0 and f'(0) ≠ 0 (``swish``, ``gelu``, ``tanh``, not ``relu``)
    for S and b to receive gradients.

    Parameters per adapter location (d = hidden size): P(S) + d, with P(S) = d for circulant and
    symmetric_toeplitz, 2d − 1 for toeplitz, d₁² + d₂² for kronecker (d = d₁d₂), 2·rank·d for ldr,
    2·rank·d for lowrank; plus 2d per extra LayerNorm (``ln_before``/``ln_after``) and 1 or d for
    ``scaling="learned"``/``"channel"``. A Houlsby adapter has 2·d·(d/r) + d/r + d (r = reduction factor).
    """

    architecture: str | None = "surm"
    structure: str = "circulant"
    rank: int | None = None
    mh_adapter: bool = True
    output_adapter: bool = True
    reduction_factor: float | Mapping = 1
    non_linearity: str = "swish"
    original_ln_before: bool = False
    original_ln_after: bool = True
    init_weights: str = "zero"

    def __post_init__(self) -> None:
        rank_options(self.structure, self.rank)  # raises on an unknown structure or a rank it does not take
        unsupported = {
            "reduction_factor": (self.reduction_factor, 1, "the structured layer is d×d, there is no bottleneck"),
            "init_weights": (self.init_weights, "zero", "SURM adapters start at S = 0, b = 0 (the identity)"),
            "is_parallel": (self.is_parallel, False, "SURM adapters are sequential"),
            "phm_layer": (self.phm_layer, False, "the structure replaces the PHM layer"),
            "use_gating": (self.use_gating, False, "gating is not implemented for SURM adapters"),
            "stochastic_depth": (self.stochastic_depth, 0.0, "stochastic depth is not implemented for SURM adapters"),
        }
        for name, (value, required, why) in unsupported.items():
            if value != required:
                raise ValueError(f"SurmAdapterConfig needs {name}={required!r} ({why}); got {value!r}")
        _require_trainable_from_zero(self.non_linearity)

    def structure_kwargs(self) -> dict[str, int]:
        """Options passed to :func:`~surm_nlp.structures.make_structure`."""
        return rank_options(self.structure, self.rank)


def _require_trainable_from_zero(non_linearity: str) -> None:
    """A zero-initialised adapter is the identity and trains only if f(0) = 0 and f'(0) ≠ 0."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    y = Activation_Function_Class(non_linearity)(x)
    y.backward()
    if y.item() != 0 or x.grad.item() == 0:
        raise ValueError(
            f"non_linearity={non_linearity!r} has f(0) = {y.item():g}, f'(0) = {x.grad.item():g}: a SURM adapter "
            "starts at S = 0 and needs f(0) = 0 and f'(0) ≠ 0 to start at the identity and train. "
            "Use 'swish', 'gelu' or 'tanh'."
        )
