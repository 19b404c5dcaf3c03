"""Toeplitz and symmetric Toeplitz matrices (m × n), mat-vec by a zero-padded FFT.

Toeplitz: W[i, j] = t[i − j + n − 1], t has m + n − 1 entries (every diagonal free).
Symmetric Toeplitz: W[i, j] = s[|i − j|], s has max(m, n) entries.

Both are the exact (m, n) shape, no truncation: W is the top-left block of an L × L circulant
for any L ≥ m + n − 1 (:func:`~.fft.toeplitz_kernel`), and L is rounded up to a fast FFT size
(2^a·3^b·5^c), O(L log L) per row of x. The parameter gradient of a folded layer
(``parameter_grads``) takes transforms of length max(m, n) instead where they are cheaper, as for
square W (:func:`~.fft.toeplitz_correlation`).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import IndexedStructuredMatrix
from .fft import fast_fft_size, fft_dtype, fft_flops, toeplitz_correlation, toeplitz_diagonals, toeplitz_kernel


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

    def _kernel_adjoint(self, grad_kernel: torch.Tensor) -> torch.Tensor:
        return self._diagonals_adjoint(toeplitz_diagonals(grad_kernel, self.in_features, self.out_features))

    def _diagonals_adjoint(self, grad_diagonals: torch.Tensor) -> torch.Tensor:
        return grad_diagonals  # t itself

    @property
    def _correlation_flops_per_row(self) -> float:
        """Work of :func:`~.fft.toeplitz_correlation` per row: two rffts and two negacyclic transforms of
        length N = max(m, n), each of these one complex FFT of length N/2 (of length N for odd N)."""
        size = max(self.in_features, self.out_features)
        return fft_flops(size, 4 if size % 2 == 0 else 6)

    @property
    def _correlates_unpadded(self) -> bool:
        """Whether ``parameter_grads`` takes :func:`~.fft.toeplitz_correlation` (cheaper for square W)
        rather than the zero-padded kernel's correlation (cheaper for 768 × 3072)."""
        return self._correlation_flops_per_row < self._kernel_correlation_flops_per_row

    @property
    def parameter_grad_flops_per_row(self) -> float:
        return min(self._correlation_flops_per_row, self._kernel_correlation_flops_per_row)

    @property
    def parameter_grad_elements_per_row(self) -> int:
        return max(self.in_features, self.out_features) if self._correlates_unpadded else self.fft_size

    def parameter_grads(self, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor | None]:
        if not self.weight.requires_grad or not self._correlates_unpadded:
            return super().parameter_grads(x, grad_y)
        dtype = fft_dtype(self.weight, x, grad_y)
        grad = toeplitz_correlation(grad_y.to(dtype), x.to(dtype), self.out_features, self.in_features)
        return [self._diagonals_adjoint(grad).to(self.weight.dtype)]


class SymmetricToeplitz(Toeplitz):
    """W[i, j] = s[|i − j|]; s has max(m, n) entries. Square instances are symmetric matrices."""

    def _num_diagonal_values(self) -> int:
        return max(self.in_features, self.out_features)

    def _diagonal_positions(self) -> torch.Tensor:
        return torch.arange(1 - self.in_features, self.out_features, device=self.weight.device).abs()

    def diagonals(self) -> torch.Tensor:
        return IndexedStructuredMatrix.diagonals(self)  # the gather: Toeplitz's weight is not t here

    def _diagonals_adjoint(self, grad_diagonals: torch.Tensor) -> torch.Tensor:
        return IndexedStructuredMatrix._diagonals_adjoint(self, grad_diagonals)
