"""Toeplitz and symmetric Toeplitz matrices (m × n), mat-vec by a zero-padded FFT.

Toeplitz: W[i, j] = t[i − j + n − 1], t has m + n − 1 entries (every diagonal free).
Symmetric Toeplitz: W[i, j] = s[|i − j|], s has max(m, n) entries.

Both are the exact (m, n) shape, no truncation: W is the top-left block of an L × L circulant
for any L ≥ m + n − 1 (:func:`~.fft.toeplitz_kernel`), and L is rounded up to a fast FFT size
(2^a·3^b·5^c), O(L log L) per row of x.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import IndexedStructuredMatrix
from .fft import fast_fft_size, toeplitz_kernel


class Toeplitz(IndexedStructuredMatrix):
    """W[i, j] = t[i − j + n − 1]; t has m + n − 1 entries (first column reversed + first row)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.fft_size = fast_fft_size(in_features + out_features - 1)
        self.weight = nn.Parameter(torch.empty(self._num_diagonal_values()))
        self.reset_parameters()

    def _num_diagonal_values(self) -> int:
        return self.in_features + self.out_features - 1

    def _diagonal_positions(self) -> torch.Tensor:
        return torch.arange(self._num_diagonal_values(), device=self.weight.device)

    def diagonals(self) -> torch.Tensor:
        return self.weight  # t itself: no gather

    def kernel(self) -> torch.Tensor:
        return toeplitz_kernel(self.diagonals(), self.in_features, self.fft_size)


class SymmetricToeplitz(Toeplitz):
    """W[i, j] = s[|i − j|]; s has max(m, n) entries. Square instances are symmetric matrices."""

    def _num_diagonal_values(self) -> int:
        return max(self.in_features, self.out_features)

    def _diagonal_positions(self) -> torch.Tensor:
        return torch.arange(1 - self.in_features, self.out_features, device=self.weight.device).abs()

    def diagonals(self) -> torch.Tensor:
        return IndexedStructuredMatrix.diagonals(self)  # the gather: Toeplitz's weight is not t here
