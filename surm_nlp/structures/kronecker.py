"""Kronecker products W = A ⊗ B, A (m₁ × n₁), B (m₂ × n₂), m = m₁m₂, n = n₁n₂.

Parameters: m₁n₁ + m₂n₂. rank(A ⊗ B) = rank(A)·rank(B), so W can be full rank.
Mat-vec without building W: with X = x reshaped to (n₁, n₂), W x = vec(A (X Bᵀ)),
O(n₁n₂m₂ + m₁n₁m₂) per row of x instead of O(mn); the backward keeps only x (:class:`KroneckerMatmul`).

Factor shapes: by default each dimension d is split as d = f·(d / f) with f the largest divisor
of d not above √d (768 = 24·32, 3072 = 48·64), giving A (f_m × f_n) and B (m/f_m × n/f_n).
Pass ``factors=(m₁, n₁)`` to choose A's shape; both must divide (m, n). A prime dimension
gets f = 1, so that side of W is dense.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .base import StructuredMatrix


def balanced_divisor(d: int) -> int:
    """Largest divisor of d that is ≤ √d."""
    return max(f for f in range(1, math.isqrt(d) + 1) if d % f == 0)


class KroneckerMatmul(torch.autograd.Function):
    """Rows of x (R, n₁n₂) ↦ rows of vec(A X Bᵀ) (R, m₁m₂); saves only A, B and x for the backward.

    T = X Bᵀ for all rows is one matmul on x as stored ((R·n₁, n₂) @ Bᵀ); A T is a batched matmul
    with A broadcast, so no step copies or transposes x (``torch.matmul(A, X)`` would). Autograd
    would also keep T, as large as x; the backward recomputes it (one matmul, R·n₁n₂m₂ multiply-adds).
    Under autocast the backward runs in the forward's autocast state (as ``torch.amp.custom_bwd``
    does), so its matmuls see the same dtypes.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b, x)
        device = x.device.type
        enabled = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        ctx.autocast = device, enabled, torch.get_autocast_dtype(device) if enabled else None
        t = (x.reshape(-1, b.shape[1]) @ b.T).reshape(x.shape[0], a.shape[1], b.shape[0])  # X Bᵀ, (R, n₁, m₂)
        return torch.bmm(a.expand(x.shape[0], *a.shape), t).reshape(x.shape[0], -1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, x = ctx.saved_tensors
        (m1, n1), (m2, n2) = a.shape, b.shape
        rows, needs_a, needs_b, needs_x = x.shape[0], *ctx.needs_input_grad
        grad_y = grad_y.reshape(rows, m1, m2)
        grad_a = grad_b = grad_x = None
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=True) if enabled else contextlib.nullcontext():
            if needs_a:  # ∂A = Σ_rows ∂Y Tᵀ, with T recomputed
                t = (x.reshape(-1, n2) @ b.T).reshape(rows, n1, m2)
                grad_a = torch.bmm(grad_y, t.transpose(1, 2)).sum(0)
            if needs_b or needs_x:
                grad_t = torch.bmm(a.T.expand(rows, n1, m1), grad_y).reshape(-1, m2)  # ∂T = Aᵀ ∂Y
                grad_b = grad_t.T @ x.reshape(-1, n2) if needs_b else None
                grad_x = (grad_t @ b).reshape(x.shape) if needs_x else None
        return grad_a, grad_b, grad_x


class Kronecker(StructuredMatrix):
    """W = A ⊗ B; ``factors=(m₁, n₁)`` is A's shape (default: balanced divisors)."""

    def __init__(self, in_features: int, out_features: int, factors: tuple[int, int] | None = None) -> None:
        super().__init__(in_features, out_features)
        if factors is None:
            factors = (balanced_divisor(out_features), balanced_divisor(in_features))
        pair = isinstance(factors, (tuple, list)) and len(factors) == 2
        if not (pair and all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in factors)) or (
            out_features % factors[0] or in_features % factors[1]
        ):
            raise ValueError(
                f"Kronecker factors={factors!r} must be positive integers (m1, n1) with m1 dividing "
                f"out_features={out_features} and n1 dividing in_features={in_features}; "
                "leave factors=None to choose them automatically"
            )
        self.factors = m1, n1 = tuple(factors)
        self.weight_a = nn.Parameter(torch.empty(m1, n1))
        self.weight_b = nn.Parameter(torch.empty(out_features // m1, in_features // n1))
        self.reset_parameters()

    def reset_parameters(self, zero_init: bool = False) -> None:
        # Var(a·b) = Var(a)·Var(b) = 1/(3n) with equal stds.
        std = (3 * self.in_features) ** -0.25
        nn.init.normal_(self.weight_a, std=std)
        if zero_init:
            nn.init.zeros_(self.weight_b)
        else:
            nn.init.normal_(self.weight_b, std=std)

    def to_dense(self) -> torch.Tensor:
        return torch.kron(self.weight_a, self.weight_b)

    @torch.no_grad()
    def fit_(self, target: torch.Tensor) -> Kronecker:
        """Nearest Kronecker product (Van Loan–Pitsianis): best rank-1 fit of the rearranged target."""
        target = self._fit_target(target)
        (m1, n1), (m2, n2) = self.weight_a.shape, self.weight_b.shape
        rearranged = target.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3)
        u, s, vh = torch.linalg.svd(rearranged.reshape(m1 * n1, m2 * n2), full_matrices=False)
        self.weight_a.copy_((u[:, 0] * s[0].sqrt()).reshape(m1, n1))
        self.weight_b.copy_((vh[0] * s[0].sqrt()).reshape(m2, n2))
        return self

    @property
    def step_flops_per_row(self) -> float:
        return 3 * self.forward_flops_per_row  # forward and two in the backward

    @property
    def forward_flops_per_row(self) -> float:
        (m1, n1), (m2, n2) = self.weight_a.shape, self.weight_b.shape
        return 2 * (n1 * n2 * m2 + m1 * n1 * m2)  # X Bᵀ and A T

    def product(self, x: torch.Tensor) -> torch.Tensor:
        y = KroneckerMatmul.apply(self.weight_a, self.weight_b, x.to(self.weight_a.dtype).reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, a={tuple(self.weight_a.shape)}, b={tuple(self.weight_b.shape)}"
