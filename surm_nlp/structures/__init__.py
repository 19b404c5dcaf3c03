"""Structured matrices of the SURM family, built by name with :func:`make_structure`.

| name                 | W (m × n, N = max(m, n))             | parameters      | mat-vec      |
|----------------------|--------------------------------------|-----------------|--------------|
| circulant            | c[(i − j) mod N], top-left block     | N               | rFFT, N      |
| toeplitz             | t[i − j + n − 1]                     | m + n − 1       | rFFT, ≥m+n−1 |
| symmetric_toeplitz   | s[abs(i − j)]                        | N               | rFFT, ≥m+n−1 |
| kronecker            | A ⊗ B                                | m₁n₁ + m₂n₂     | two matmuls  |
| ldr                  | Σᵢ₌₁ʳ Z₁(gᵢ) Z₋₁(hᵢ), top-left block | 2rN             | rFFT, 2N + N |
| lowrank              | B A                                  | r(m + n)        | two matmuls  |
"""

from __future__ import annotations

import inspect

from .base import IndexedStructuredMatrix, StructuredMatrix, WithParameterGrads, gradient_fit_, require_positive_int
from .circulant import Circulant
from .kronecker import Kronecker
from .ldr import LowDisplacementRank
from .lowrank import LowRank
from .toeplitz import SymmetricToeplitz, Toeplitz

STRUCTURE_CLASSES: dict[str, type[StructuredMatrix]] = {
    "circulant": Circulant,
    "toeplitz": Toeplitz,
    "symmetric_toeplitz": SymmetricToeplitz,
    "kronecker": Kronecker,
    "ldr": LowDisplacementRank,
    "lowrank": LowRank,
}
STRUCTURES: tuple[str, ...] = tuple(STRUCTURE_CLASSES)


def structure_options(name: str) -> tuple[str, ...]:
    """Keyword options the structure ``name`` accepts besides its shape (e.g. ``("rank",)``)."""
    if name not in STRUCTURE_CLASSES:
        raise ValueError(f"unknown structure {name!r}; choose one of {', '.join(STRUCTURES)}")
    parameters = inspect.signature(STRUCTURE_CLASSES[name]).parameters
    return tuple(p for p in parameters if p not in ("in_features", "out_features"))


def rank_options(name: str, rank: int | None) -> dict[str, int]:
    """``{"rank": rank}`` for a structure that takes a rank, ``{}`` when rank is None; else a ValueError."""
    if rank is None:
        structure_options(name)  # raises on an unknown structure
        return {}
    if "rank" not in structure_options(name):
        raise ValueError(f"rank applies to the ldr and lowrank structures, not to {name!r}; unset it")
    return {"rank": require_positive_int("rank", rank)}


def make_structure(name: str, in_features: int, out_features: int, **options: object) -> StructuredMatrix:
    """Build the structured matrix ``name`` of shape (out_features, in_features).

    ``options`` are the structure's own: ``rank`` for ``ldr`` and ``lowrank``, ``factors`` for
    ``kronecker``. An option the structure does not take is an error, not silently ignored.
    """
    accepted = structure_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"structure {name!r} does not take {', '.join(unknown)}; its options are: {', '.join(accepted) or 'none'}"
        )
    return STRUCTURE_CLASSES[name](in_features, out_features, **options)


__all__ = [
    "STRUCTURES",
    "STRUCTURE_CLASSES",
    "Circulant",
    "IndexedStructuredMatrix",
    "Kronecker",
    "LowDisplacementRank",
    "LowRank",
    "StructuredMatrix",
    "SymmetricToeplitz",
    "Toeplitz",
    "WithParameterGrads",
    "gradient_fit_",
    "make_structure",
    "rank_options",
    "structure_options",
]
