"""Low displacement rank (LDR) matrices W(G, H) = Σᵢ₌₁ʳ Z₁(gᵢ) Z₋₁(hᵢ).

Z₁(g) is the circulant and Z₋₁(h) the skew-circulant matrix with first column g, h
(Z_f(v) = Σₖ vₖ Z_fᵏ, Z_f the down-shift with f in the top-right corner). Since
Z₁ − Z₋₁ = 2 e₀ e_{N−1}ᵀ, the displacement Z₁W − WZ₋₁ = Σᵢ Z₁(gᵢ)(Z₁ − Z₋₁)Z₋₁(hᵢ) has rank
≤ r; every N × N matrix is of this form for some r ≤ N, so r interpolates from Toeplitz-like
(r = 1, 2) to dense (Sindhwani et al., 2015).

Parameters: 2·r·N with N = max(m, n); rectangular shapes use the top-left (m, n) block.
Dense form in O(r·N²) from that displacement (``to_dense``). Mat-vec by real FFTs: Z₋₁(h) is the
Toeplitz matrix with diagonals (−h₁ … −h_{N−1}, h₀ … h_{N−1}), a circulant of length L ≥ 2N − 1;
then Z₁(g) is a circulant of length N. O(r·N log N) per row of x.
One autograd Function runs the whole sum and saves only x: the r intermediate products Z₋₁(hᵢ)x
(r times the size of x, in float32) are recomputed in the backward rather than kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .base import StructuredMatrix, require_positive_int
from .fft import circulant_matmul, fast_fft_size, fft_dtype, fft_flops, toeplitz_kernel


def _sum_over_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over all leading dims of conj(a)·b for spectra (..., r, bins), broadcasting; (r, bins)."""
    a, b = torch.broadcast_tensors(a, b)
    return torch.linalg.vecdot(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), dim=0)


class LdrMatmul(torch.autograd.Function):
    """y = Σᵢ C_N(gᵢ) · (C_L(kᵢ) · pad(x))[:N], cut to m: W(G, H) x with kᵢ the skew-circulant kernel of hᵢ.

    g (r, N), kernels (r, L), x (..., n ≤ N). Forward: rfft(x), r irffts of length L, r rffts and one
    irfft of length N. The backward recomputes uᵢ = Z₋₁(hᵢ)x from x (needed only for ∂g).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, g: torch.Tensor, kernels: torch.Tensor, x: torch.Tensor, out_features: int
    ) -> torch.Tensor:
        size, fft_size = g.shape[-1], kernels.shape[-1]
        dtype = fft_dtype(g, kernels, x)
        g_spectrum, kernel_spectrum = torch.fft.rfft(g.to(dtype)), torch.fft.rfft(kernels.to(dtype))
        x_spectrum = torch.fft.rfft(x.to(dtype), n=fft_size).unsqueeze(-2)
        u = torch.fft.irfft(kernel_spectrum * x_spectrum, n=fft_size)[..., :size]  # (..., r, N)
        y = torch.fft.irfft((g_spectrum * torch.fft.rfft(u)).sum(-2), n=size)[..., :out_features]
        ctx.save_for_backward(g_spectrum, kernel_spectrum, x if g.requires_grad or kernels.requires_grad else None)
        ctx.shapes = g.dtype, kernels.dtype, x.dtype, x.shape[-1], size, fft_size
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g_spectrum, kernel_spectrum, x = ctx.saved_tensors
        g_dtype, kernel_dtype, x_dtype, in_features, size, fft_size = ctx.shapes
        needs_g, needs_kernels, needs_x, _ = ctx.needs_input_grad
        dtype = g_spectrum.real.dtype
        grad_g = grad_kernels = grad_x = None
        grad_spectrum = torch.fft.rfft(grad_y.to(dtype), n=size).unsqueeze(-2)
        if needs_g or needs_kernels:
            x_spectrum = torch.fft.rfft(x.to(dtype), n=fft_size).unsqueeze(-2)
        if needs_g:  # ∂gᵢ = correlation of ∂y with uᵢ
            u = torch.fft.irfft(kernel_spectrum * x_spectrum, n=fft_size)[..., :size]
            grad_g = torch.fft.irfft(_sum_over_rows(torch.fft.rfft(u), grad_spectrum), n=size).to(g_dtype)
        if not (needs_kernels or needs_x):
            return grad_g, None, None, None
        grad_u = torch.fft.irfft(grad_spectrum * g_spectrum.conj(), n=size)  # ∂uᵢ = C_N(gᵢ)ᵀ ∂y
        grad_u_spectrum = torch.fft.rfft(grad_u, n=fft_size)
        if needs_kernels:  # ∂kᵢ = correlation of ∂uᵢ with x
            grad_kernels = torch.fft.irfft(_sum_over_rows(x_spectrum, grad_u_spectrum), n=fft_size).to(kernel_dtype)
        if needs_x:  # ∂x = Σᵢ C_L(kᵢ)ᵀ ∂uᵢ
            grad_x = torch.fft.irfft((grad_u_spectrum * kernel_spectrum.conj()).sum(-2), n=fft_size)
            grad_x = grad_x[..., :in_features].to(x_dtype)
        return grad_g, grad_kernels, grad_x, None


def _diagonal_cumsum(x: torch.Tensor) -> torch.Tensor:
    """P[a, b] = Σ_{t ≤ b} x[(a − b + t) mod N, t]: prefix sums along the wrapped diagonals of a square x.

    x is stacked on itself, so the diagonal from (d, 0) is the strided row (d + t)·N + t, t < N, of
    that buffer, scanned in place for d = 1 … N; it ends in the first copy below the main diagonal
    (a > b) and in the second on and above it.
    """
    size = x.shape[0]
    stacked = x.new_empty(2, size, size)
    stacked.copy_(x.expand(2, size, size))
    stacked.as_strided((size, size), (size, size + 1), size).cumsum_(1)
    below = torch.ones(size, size, dtype=torch.bool, device=x.device).tril_(-1)
    return torch.where(below, stacked[0], stacked[1])


class LdrDense(torch.autograd.Function):
    """W(G, H) as a dense N × N matrix in O(r·N²) from its displacement Z₁W − WZ₋₁ = 2 Σᵢ gᵢ reverse(hᵢ)ᵀ.

    Column by column W[:, j + 1] = roll(W[:, j], 1) − 2 Σᵢ gᵢ hᵢ[N − 1 − j], so W is the prefix sum
    along wrapped diagonals of F = [c | −2 Σᵢ gᵢ (hᵢ[N − 1], …, hᵢ[1])], with the first column
    c = W e₀ = Σᵢ Z₁(gᵢ) hᵢ given (its gradient flows on through ``circulant_matmul``). The backward
    needs the suffix sums along the diagonals of ∂W: the prefix sums of ∂W rotated by 180°, rotated
    back. Saves only g and h.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, first_column: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, h)
        steps = g.new_empty(g.shape[-1], g.shape[-1])
        steps[:, 0] = first_column
        torch.mm(g.T, -2 * h[:, 1:].flip(-1), out=steps[:, 1:])
        return _diagonal_cumsum(steps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, h = ctx.saved_tensors
        rotated = _diagonal_cumsum(grad_dense.flip(0, 1))  # ∂F[a, b] = rotated[N − 1 − a, N − 1 − b]
        grad_g = -2 * (rotated[:, :-1] @ h[:, 1:].T).flip(0).T
        grad_h = nn.functional.pad(-2 * g.flip(-1) @ rotated[:, :-1], (1, 0))  # h[0] enters only c
        return rotated[:, -1].flip(0), grad_g, grad_h


class LowDisplacementRank(StructuredMatrix):
    """W = Σᵢ Z₁(gᵢ) Z₋₁(hᵢ) with displacement rank ≤ ``rank``; G, H are (rank, N)."""

    def __init__(self, in_features: int, out_features: int, rank: int = 1) -> None:
        super().__init__(in_features, out_features)
        self.rank = require_positive_int("rank", rank)
        self.size = max(in_features, out_features)
        self.fft_size = fast_fft_size(2 * self.size - 1)
        self.weight_g = nn.Parameter(torch.empty(rank, self.size))
        self.weight_h = nn.Parameter(torch.empty(rank, self.size))
        self.reset_parameters()

    def reset_parameters(self, zero_init: bool = False) -> None:
        # W_ij sums r·N products g·h, so Var(W_ij) = r·N·std⁴ = 1/(3n).
        std = (3 * self.in_features * self.rank * self.size) ** -0.25
        nn.init.normal_(self.weight_g, std=std)
        if zero_init:
            nn.init.zeros_(self.weight_h)
        else:
            nn.init.normal_(self.weight_h, std=std)

    def to_dense(self) -> torch.Tensor:
        dtype = fft_dtype(self.weight_g)
        g, h = self.weight_g.to(dtype), self.weight_h.to(dtype)
        dense = LdrDense.apply(circulant_matmul(g, h, self.size).sum(0), g, h)  # first column Σᵢ Z₁(gᵢ) hᵢ
        return dense[: self.out_features, : self.in_features].to(self.weight_g.dtype)

    @property
    def step_flops_per_row(self) -> float:
        # LdrMatmul: 3 + 3r transforms of length L (rfft(x) twice, irffts of uᵢ twice, rffts of ∂uᵢ,
        # irfft for ∂x) and 2 + 3r of length N (rffts of uᵢ twice, irffts for y and ∂uᵢ, rfft(∂y)).
        r = self.rank
        return fft_flops(self.fft_size, 3 + 3 * r) + fft_flops(self.size, 2 + 3 * r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.weight_h
        skew_diagonals = torch.cat([-h[:, 1:], h], dim=-1)  # Z₋₁(h)[i, j] = h[i − j], or −h[N + i − j] above
        kernels = toeplitz_kernel(skew_diagonals, self.size, self.fft_size)
        return LdrMatmul.apply(self.weight_g, kernels, x, self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
