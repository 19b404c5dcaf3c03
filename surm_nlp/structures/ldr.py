"""Low displacement rank (LDR) matrices W(G, H) = Σᵢ₌₁ʳ Z₁(gᵢ) Z₋₁(hᵢ).

Z₁(g) is the circulant and Z₋₁(h) the skew-circulant matrix with first column g, h
(Z_f(v) = Σₖ vₖ Z_fᵏ, Z_f the down-shift with f in the top-right corner). Since
Z₁ − Z₋₁ = 2 e₀ e_{N−1}ᵀ, the displacement Z₁W − WZ₋₁ = Σᵢ Z₁(gᵢ)(Z₁ − Z₋₁)Z₋₁(hᵢ) has rank
≤ r; every N × N matrix is of this form for some r ≤ N, so r interpolates from Toeplitz-like
(r = 1, 2) to dense (Sindhwani et al., 2015).

Parameters: 2·r·N with N = max(m, n); rectangular shapes use the top-left (m, n) block.
Mat-vec by real FFTs: Z₋₁(h) is the Toeplitz matrix with diagonals (−h₁ … −h_{N−1}, h₀ … h_{N−1}),
a circulant of length L ≥ 2N − 1; then Z₁(g) is a circulant of length N. O(r·N log N) per row of x.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StructuredMatrix, require_positive_int
from .fft import circulant_matmul, fast_fft_size, fft_dtype, toeplitz_kernel


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.weight_h
        skew_diagonals = torch.cat([-h[:, 1:], h], dim=-1)  # Z₋₁(h)[i, j] = h[i − j], or −h[N + i − j] above
        x_fft = x.to(fft_dtype(h, x)).unsqueeze(-2)  # u stays in the FFT dtype between the two products
        u = circulant_matmul(toeplitz_kernel(skew_diagonals, self.size, self.fft_size), x_fft, self.size)
        y = circulant_matmul(self.weight_g, u, self.out_features).sum(-2)  # Σᵢ Z₁(gᵢ) Z₋₁(hᵢ) x
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
