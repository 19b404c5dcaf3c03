"""Common interface of every structured matrix W (out_features × in_features)."""

from __future__ import annotations

import math

import torch
from torch import nn


def require_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class StructuredMatrix(nn.Module):
    """A structured matrix W of shape (out_features, in_features) applied as y = x Wᵀ.

    Subclasses define ``forward`` (the fast mat-vec), ``reset_parameters``, ``to_dense``,
    ``step_flops_per_row`` and, where a closed form exists, ``fit_``. Rectangular shapes are handled
    by each subclass; the FFT-based ones embed W as the top-left (m, n) block of an N × N matrix.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = require_positive_int("in_features", in_features)
        self.out_features = require_positive_int("out_features", out_features)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars that define W."""
        return sum(p.numel() for p in self.parameters())

    def reset_parameters(self, zero_init: bool = False) -> None:
        """Random init with Var(W_ij) ≈ 1/(3·in_features), the scale of ``nn.Linear``.

        ``zero_init=True`` makes W = 0 while keeping non-zero gradients (for bilinear structures
        only one factor is zeroed, as LoRA zeroes B), so a weight update starts at ΔW = 0.
        """
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """W as a dense (out_features, in_features) tensor in O(mn) work (times the rank for ldr,
        lowrank), differentiable w.r.t. the parameters."""
        raise NotImplementedError

    @property
    def step_flops_per_row(self) -> float:
        """Work of the structured product's forward and backward per row of x, in matmul flops.

        FFTs count :data:`~.fft.FFT_FLOP_WEIGHT` times their flops. A layer compares it with the
        2mn flops per row of the dense weight gradient to choose how to train (``SurmLayer``).
        """
        raise NotImplementedError

    def fit_(self, target: torch.Tensor) -> StructuredMatrix:
        """Set the parameters to a least-squares fit of ``target`` (out_features, in_features).

        The default runs :func:`gradient_fit_`; structures with a closed-form optimum override it.
        Returns ``self``.
        """
        return gradient_fit_(self, target)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_parameters={self.num_parameters}"

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check_target(self, target: torch.Tensor) -> None:
        if tuple(target.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"target has shape {tuple(target.shape)}, expected "
                f"(out_features, in_features) = ({self.out_features}, {self.in_features})"
            )


class IndexedStructuredMatrix(StructuredMatrix):
    """A structure whose entries are copies of one parameter vector: W[i, j] = p[index[i, j]].

    Circulant and (symmetric) Toeplitz matrices are of this kind, all Toeplitz: each says which p[k]
    lies on each diagonal (``_diagonal_positions``), W is a strided view of its diagonals
    (``to_dense``), and the least-squares fit is closed-form: each p[k] is the mean of the target
    entries it covers.
    """

    weight: nn.Parameter

    def reset_parameters(self, zero_init: bool = False) -> None:
        """Every entry of W is one p[k], so p ~ U(±1/√n) gives Var(W_ij) = 1/(3n); zero_init: p = 0."""
        if zero_init:
            nn.init.zeros_(self.weight)
        else:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)

    def _diagonal_positions(self) -> torch.Tensor:
        """Long tensor (m + n − 1,): the position in ``self.weight`` of diagonal d = i − j, at d + n − 1."""
        raise NotImplementedError

    def diagonals(self) -> torch.Tensor:
        """t of length m + n − 1 with W[i, j] = t[i − j + n − 1]."""
        return self.weight[self._diagonal_positions()]

    def to_dense(self) -> torch.Tensor:
        # Upside down, W is the Hankel matrix W[m − 1 − i, j] = t̄[i + j] of t reversed: its windows of
        # length n, a view (a gather, and its scatter-add backward, cost several times more).
        return self.diagonals().flip(-1).unfold(-1, self.in_features, 1).flip(-2)

    @torch.no_grad()
    def fit_(self, target: torch.Tensor) -> IndexedStructuredMatrix:
        self._check_target(target)
        rows, cols = (torch.arange(size, device=self.weight.device) for size in (self.out_features, self.in_features))
        index = self._diagonal_positions()[rows[:, None] - cols + self.in_features - 1].flatten()
        values = target.to(self.weight).flatten()
        sums = torch.zeros_like(self.weight).index_add_(0, index, values)
        counts = torch.zeros_like(self.weight).index_add_(0, index, torch.ones_like(values))
        self.weight.copy_(sums / counts.clamp_min(1))
        return self


def gradient_fit_(
    structure: StructuredMatrix, target: torch.Tensor, steps: int = 2000, lr: float = 1e-2
) -> StructuredMatrix:
    """Minimise ‖W − target‖_F over the parameters of ``structure`` with Adam; returns it."""
    structure._check_target(target)
    target = target.detach().to(device=structure._device, dtype=structure._dtype)
    optimizer = torch.optim.Adam(structure.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (structure.to_dense() - target).pow(2).sum()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return structure
