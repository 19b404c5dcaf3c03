"""Common interface of every structured matrix W (out_features × in_features)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .fft import circulant_matmul, fft_dtype, fft_flops, kernel_correlation_


def require_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


#: A memory-bound pass over one entry of an m × n tensor (a copy, an add) costs about this many
#: matmul flops on CPU; fitted to the crossovers that bench/fold_rows.py prints (square and
#: rectangular, every FFT structure: measured / predicted 0.9–1.9, geometric mean 1.17).
DENSE_PASS_FLOPS = 50.0

#: On CPU the FFT structures split a batch of rows into chunks of at least this many elements of
#: their largest FFT buffer (``fft_elements_per_row`` a row), so that each transform and the passes
#: between them run in cache; a batch of fewer than twice this (RoBERTa-base's 1,024 rows of 768,
#: but for LDR of rank ≥ 3) goes at once. At 4,096 rows of a 3072- or 4096-wide layer the structured
#: forward + backward and a folded layer's parameter gradient ran 1.4–4× faster so
#: (bench/fft_chunks.py, which also picked 2²⁰ from 2¹⁹–2²²; bench/README.md, change 22). Other
#: devices take all rows at once.
CPU_FFT_CHUNK_ELEMENTS = 2**20


class StructuredMatrix(nn.Module):
    """A structured matrix W of shape (out_features, in_features) applied as y = x Wᵀ.

    Subclasses define ``product`` (the fast mat-vec), ``reset_parameters``, ``to_dense``,
    ``step_flops_per_row``, ``forward_flops_per_row``, where a closed form exists ``fit_``, and where
    the parameter half of the backward is cheaper than the whole step ``parameter_grads`` (with its
    cost), and the FFT-based ones ``fft_elements_per_row`` (and ``parameter_grad_elements_per_row``
    where that gradient's transforms are of another length), by which ``forward`` and a folded
    layer's parameter gradient take many rows in chunks on CPU (``row_chunks``). Rectangular shapes are
    handled by each subclass; the FFT-based ones embed W as the top-left (m, n) block of an N × N matrix.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Wᵀ for x of shape (..., in_features), by ``product``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} maps {self.in_features} → {self.out_features} features, but x has "
                f"{x.shape[-1]} in its last dimension (shape {tuple(x.shape)})"
            )
        if x.numel() == 0:  # no rows, which FFT backends reject: the dense product, with zero gradients
            dense = self.to_dense()
            return (x.to(dense.dtype) @ dense.T).to(x.dtype)
        chunks = self.row_chunks(self.fft_elements_per_row, x)
        if chunks is None:
            return self.product(x)
        return torch.cat([self.product(rows) for (rows,) in chunks]).view(*x.shape[:-1], self.out_features)

    @property
    def fft_elements_per_row(self) -> int:
        """Elements of the largest FFT buffer that one row of x takes in ``product``; 0 for structures
        without FFTs, whose products (matmuls) are never split into chunks."""
        return 0

    @property
    def parameter_grad_elements_per_row(self) -> int:
        """The same for ``parameter_grads`` (by default that of ``product``)."""
        return self.fft_elements_per_row

    @staticmethod
    def row_chunks(elements_per_row: int, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]] | None:
        """The tensors (..., features), with the same rows, as (rows, features) views in ⌊rows·e / C⌋ chunks of
        equal rows (± 1; e = ``elements_per_row``, C = :data:`CPU_FFT_CHUNK_ELEMENTS`, so each holds at least
        C FFT elements), at most one per row; None where all rows go at once: off CPU, without FFTs (e = 0),
        below two chunks, or while compiling (whose batch size may be symbolic)."""
        first = tensors[0]
        rows = first.numel() // first.shape[-1]
        if first.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        count = min(rows, rows * elements_per_row // CPU_FFT_CHUNK_ELEMENTS)
        if count < 2:
            return None
        return list(zip(*(t.reshape(rows, t.shape[-1]).tensor_split(count) for t in tensors), strict=True))

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The structure's fast x Wᵀ for x (..., in_features) with at least one row."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """W as a new, contiguous dense (out_features, in_features) tensor, all of its own storage,
        differentiable w.r.t. the parameters: O(mn) work (times the rank for lowrank and ldr). A folding layer
        may write into it."""
        raise NotImplementedError

    @property
    def step_flops_per_row(self) -> float:
        """Work of the structured product's forward and backward per row of x, in matmul flops.

        FFTs count :data:`~.fft.FFT_FLOP_WEIGHT` times their flops. A layer folds S into its weight
        where this, over the rows of x, costs more than ``dense_flops`` plus S's parameter gradient
        (``parameter_grad_flops_per_row`` a row, or ``dense_grad_flops``) (``SurmLayer``).
        """
        raise NotImplementedError

    @property
    def forward_flops_per_row(self) -> float:
        """Work of the structured product's forward alone (inference) per row of x, in matmul flops, FFTs
        weighted as in ``step_flops_per_row``. A layer without gradients folds S into its weight where this
        and adding α·S(x) to its output cost more, over the rows of x, than ``dense_flops`` (``SurmLayer``)."""
        raise NotImplementedError

    @property
    def dense_flops(self) -> float:
        """Work of ``to_dense`` and adding it to a weight, in matmul flops: about four passes over the
        m × n entries (:data:`DENSE_PASS_FLOPS` each)."""
        return 4 * DENSE_PASS_FLOPS * self.in_features * self.out_features

    @property
    def parameter_grad_flops_per_row(self) -> float:
        """Work of ``parameter_grads`` per row of x, in matmul flops (by default that of the whole step)."""
        return self.step_flops_per_row

    def grads_through_dense(self, rows: int) -> bool:
        """Whether a layer that folds S into its weight gets S's parameter gradient for ``rows`` rows of x
        more cheaply the dense way (``dense_grad_flops``) than by ``parameter_grads``. It does where
        transforms cost more than a matmul: at small widths, and for LDR of displacement rank ≥ 2,
        whose transforms grow with the rank."""
        return self.dense_grad_flops(rows) < rows * self.parameter_grad_flops_per_row

    def dense_grad_flops(self, rows: int) -> float:
        """Work of S's parameter gradient the dense way, in matmul flops: ∂S = ∂yᵀx (autograd's gradient
        of the folded weight, 2mn a row), then ``to_dense``'s backward (about two ``dense_flops``).
        Several S folded into one weight share that ∂S; each is charged for it here."""
        return rows * 2 * self.in_features * self.out_features + 2 * self.dense_flops

    def parameter_grads(self, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor | None]:
        """∂/∂θ of Σ grad_y·S(x) for each parameter θ in ``parameters()`` order (None if frozen), not ∂x.

        What S's parameters get in a layer that folds S into its weight (:class:`WithParameterGrads`).
        This default differentiates ``product``; FFT structures run only the parameter half of their
        backward.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(self.product(x.detach()), trainable, grad_y, allow_unused=True))
        return [next(grads) if p.requires_grad else None for p in self.parameters()]

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

    def _fit_target(self, target: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``target`` checked to be (out_features, in_features), on the parameters' device, in ``dtype`` (default:
        float32, float64 for a float64 target: closed-form fits in half precision would lose the target, a
        bfloat16 count stopping at 256, or not run, with no half-precision SVD on CPU)."""
        if tuple(target.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"target has shape {tuple(target.shape)}, expected "
                f"(out_features, in_features) = ({self.out_features}, {self.in_features})"
            )
        return target.detach().to(device=self._device, dtype=dtype or fft_dtype(target))


class IndexedStructuredMatrix(StructuredMatrix):
    """A structure whose entries are copies of one parameter vector: W[i, j] = p[index[i, j]].

    Circulant and (symmetric) Toeplitz matrices are of this kind, all Toeplitz: each says which p[k]
    lies on each diagonal (``_diagonal_positions``), W is a strided view of its diagonals
    (``to_dense``), and the least-squares fit is closed-form: each p[k] is the mean of the target
    entries it covers.
    """

    weight: nn.Parameter
    fft_size: int  # L, the length of the circulant kernel

    def reset_parameters(self, zero_init: bool = False) -> None:
        """Every entry of W is one p[k], so p ~ U(±1/√n) gives Var(W_ij) = 1/(3n); zero_init: p = 0."""
        if zero_init:
            nn.init.zeros_(self.weight)
        else:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)

    @property
    def fft_elements_per_row(self) -> int:
        return self.fft_size  # a real row of length L, its spectrum of L/2 + 1 complex values

    def _diagonal_positions(self) -> torch.Tensor:
        """Long tensor (m + n − 1,): the position in ``self.weight`` of diagonal d = i − j, at d + n − 1."""
        raise NotImplementedError

    def diagonals(self) -> torch.Tensor:
        """t of length m + n − 1 with W[i, j] = t[i − j + n − 1]."""
        return self.weight[self._diagonal_positions()]

    def kernel(self) -> torch.Tensor:
        """c of length L with W = C(c)[:m, :n], the circulant whose product is S(x) (:func:`~.fft.circulant_matmul`)."""
        raise NotImplementedError

    def _kernel_adjoint(self, grad_kernel: torch.Tensor) -> torch.Tensor:
        """∂p from ∂c: the adjoint of the linear map p ↦ ``kernel()``."""
        raise NotImplementedError

    def _diagonals_adjoint(self, grad_diagonals: torch.Tensor) -> torch.Tensor:
        """∂p from ∂t: each p[k] gets the sum over the diagonals it lies on (``_diagonal_positions``)."""
        return grad_diagonals.new_zeros(self.weight.shape).index_add_(-1, self._diagonal_positions(), grad_diagonals)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return circulant_matmul(self.kernel(), x, self.out_features)

    @property
    def step_flops_per_row(self) -> float:
        return fft_flops(self.fft_size, 5)  # see circulant_matmul

    @property
    def forward_flops_per_row(self) -> float:
        return fft_flops(self.fft_size, 2)  # rfft(x), irfft; the kernel's rfft is once per forward

    @property
    def parameter_grad_flops_per_row(self) -> float:
        return self._kernel_correlation_flops_per_row

    @property
    def _kernel_correlation_flops_per_row(self) -> float:
        """Work of the kernel's correlation (``parameter_grads``) per row: rfft(x), rfft(∂y) of length L."""
        return fft_flops(self.fft_size, 2)

    def parameter_grads(self, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor | None]:
        if not self.weight.requires_grad:
            return [None]
        size, dtype = self.fft_size, fft_dtype(self.weight, x, grad_y)
        x_spectrum, grad_spectrum = (torch.fft.rfft(t.to(dtype), n=size) for t in (x, grad_y))
        grad_kernel = kernel_correlation_(grad_spectrum, x_spectrum, (size,))
        return [self._kernel_adjoint(grad_kernel).to(self.weight.dtype)]

    def to_dense(self) -> torch.Tensor:
        # Upside down, W is the Hankel matrix W[m − 1 − i, j] = t̄[i + j] of t reversed: its windows of
        # length n, a view (a gather, and its scatter-add backward, cost several times more). Rows
        # reversed by index_select, which writes row-major: flip keeps the view's layout, column-major
        # for m < n, and adding that to a weight transposes it (10× slower at 768 × 3072).
        hankel = self.diagonals().flip(-1).unfold(-1, self.in_features, 1)
        rows = torch.arange(self.out_features - 1, -1, -1, device=hankel.device)
        return hankel.index_select(-2, rows)

    @torch.no_grad()
    def fit_(self, target: torch.Tensor) -> IndexedStructuredMatrix:
        values = self._fit_target(target).flatten()
        rows, cols = (torch.arange(size, device=self.weight.device) for size in (self.out_features, self.in_features))
        index = self._diagonal_positions()[rows[:, None] - cols + self.in_features - 1].flatten()
        sums = values.new_zeros(self.weight.shape).index_add_(0, index, values)
        counts = values.new_zeros(self.weight.shape).index_add_(0, index, torch.ones_like(values))
        self.weight.copy_(sums / counts.clamp_min(1))
        return self


class WithParameterGrads(torch.autograd.Function):
    """y as it is; in the backward, S's parameters get scale·S.parameter_grads(x, ∂y) (summed over
    the chunks of ``row_chunks`` on CPU).

    For a layer that folds S into its weight, y = x(W₀ + scale·S)ᵀ with S detached: one matmul for y
    and one for ∂x, as in the frozen layer, and S's gradient without the dense ∂S = ∂yᵀx (mn
    multiply-adds per row of x). Saves x and the parameters (so changing them in place before the
    backward is an error, not a wrong gradient); y counts as modified in place, so later in-place
    ops on it stay allowed.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        y: torch.Tensor,
        x: torch.Tensor,
        matrix: StructuredMatrix,
        scale: float,
        *parameters: nn.Parameter,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, *parameters)
        ctx.matrix, ctx.scale = matrix, scale
        ctx.mark_dirty(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *_ = ctx.saved_tensors  # the parameters: checked unchanged since the forward
        chunks = ctx.matrix.row_chunks(ctx.matrix.parameter_grad_elements_per_row, x, grad_y) or [(x, grad_y)]
        grads = zip(*(ctx.matrix.parameter_grads(*chunk) for chunk in chunks), strict=True)
        scaled = (None if parts[0] is None else _sum_in_fft_dtype(parts) * ctx.scale for parts in grads)
        return grad_y, None, None, None, *scaled


def _sum_in_fft_dtype(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ parts added in float32 (float64) and cast back once, not rounded to bf16/fp16 at each add."""
    if len(parts) == 1:
        return parts[0]
    return sum(part.to(fft_dtype(part)) for part in parts).to(parts[0].dtype)


def gradient_fit_(
    structure: StructuredMatrix, target: torch.Tensor, steps: int = 2000, lr: float = 1e-2
) -> StructuredMatrix:
    """Minimise ‖W − target‖_F over the parameters of ``structure`` with Adam; returns it."""
    target = structure._fit_target(target, structure._dtype)
    optimizer = torch.optim.Adam(structure.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (structure.to_dense() - target).pow(2).sum()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return structure
