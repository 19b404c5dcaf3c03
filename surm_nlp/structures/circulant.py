"""Circulant matrices: W = C(c)[:m, :n], W[i, j] = c[(i − j) mod N], N = max(m, n).

Parameters: N = max(in_features, out_features). Mat-vec by real FFT of length N
(:func:`~.fft.circulant_matmul`), O(N log N) per row of x. A square circulant is full rank unless
a DFT coefficient of c vanishes. Rectangular shapes use the top-left (m, n) block of the N × N circulant.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import IndexedStructuredMatrix


class Circulant(IndexedStructuredMatrix):
    """W[i, j] = c[(i − j) mod N]; c has N = max(m, n) entries."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.fft_size = max(in_features, out_features)
        self.weight = nn.Parameter(torch.empty(self.fft_size))
        self.reset_parameters()

    def _diagonal_positions(self) -> torch.Tensor:
        return torch.arange(1 - self.in_features, self.out_features, device=self.weight.device) % self.fft_size

    def kernel(self) -> torch.Tensor:
        return self.weight

    def _kernel_adjoint(self, grad_kernel: torch.Tensor) -> torch.Tensor:
        return grad_kernel
