"""Low-rank matrices W = B A, A (r × n), B (m × r): the LoRA update inside the SURM family.

Parameters: r·(m + n). rank(W) ≤ r. Mat-vec O(r·(m + n)) per row of x.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import StructuredMatrix, require_positive_int


class LowRank(StructuredMatrix):
    """W = B A of rank ≤ ``rank``; ``zero_init`` gives LoRA's init (A uniform, B = 0)."""

    def __init__(self, in_features: int, out_features: int, rank: int = 8) -> None:
        super().__init__(in_features, out_features)
        self.rank = require_positive_int("rank", rank)
        self.weight_a = nn.Parameter(torch.empty(rank, in_features))
        self.weight_b = nn.Parameter(torch.empty(out_features, rank))
        self.reset_parameters()

    def reset_parameters(self, zero_init: bool = False) -> None:
        # A as LoRA's kaiming_uniform_(a=√5): U(±1/√n), Var = 1/(3n); B then scales W to 1/(3n).
        nn.init.uniform_(self.weight_a, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))
        if zero_init:
            nn.init.zeros_(self.weight_b)
        else:
            bound = math.sqrt(3 / self.rank)
            nn.init.uniform_(self.weight_b, -bound, bound)

    def to_dense(self) -> torch.Tensor:
        return self.weight_b @ self.weight_a

    @torch.no_grad()
    def fit_(self, target: torch.Tensor) -> LowRank:
        """Truncated SVD, the optimal rank-r fit (Eckart–Young)."""
        target = self._fit_target(target)
        u, s, vh = torch.linalg.svd(target, full_matrices=False)
        k = min(self.rank, s.numel())
        root = s[:k].sqrt()
        self.weight_a.zero_()[:k].copy_(root[:, None] * vh[:k])
        self.weight_b.zero_()[:, :k].copy_(u[:, :k] * root)
        return self

    @property
    def step_flops_per_row(self) -> float:
        return 3 * self.forward_flops_per_row  # forward, ∂x, ∂(A, B)

    @property
    def forward_flops_per_row(self) -> float:
        return 2 * self.rank * (self.in_features + self.out_features)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.weight_a.dtype) @ self.weight_a.T @ self.weight_b.T).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
