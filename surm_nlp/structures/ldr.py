"""Low displacement rank (LDR) matrices W(G, H) = Σᵢ₌₁ʳ Z₁(gᵢ) Z₋₁(hᵢ).

Z₁(g) is the circulant and Z₋₁(h) the skew-circulant matrix with first column g, h
(Z_f(v) = Σₖ vₖ Z_fᵏ, Z_f the down-shift with f in the top-right corner). Since
Z₁ − Z₋₁ = 2 e₀ e_{N−1}ᵀ, the displacement Z₁W − WZ₋₁ = Σᵢ Z₁(gᵢ)(Z₁ − Z₋₁)Z₋₁(hᵢ) has rank
≤ r; every N × N matrix is of this form for some r ≤ N, so r interpolates from Toeplitz-like
(r = 1, 2) to dense (Sindhwani et al., 2015).

Parameters: 2·r·N with N = max(m, n); rectangular shapes use the top-left (m, n) block.
Dense form in O(r·m·n) from that displacement (``to_dense``). Mat-vec by FFTs of length N: Z₋₁(h)
is diagonal in the negacyclic spectrum (``fft.negacyclic_fft``, the DFT at the roots of z^N = −1),
Z₁(g) in the ordinary one. O(r·N log N) per row of x.
One autograd Function runs the whole sum and saves only x: the r intermediate products Z₋₁(hᵢ)x
(r times the size of x, in float32) are recomputed in the backward rather than kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .base import DENSE_PASS_FLOPS, StructuredMatrix, require_positive_int
from .fft import (
    circulant_matmul,
    correlation_spectrum_,
    fft_dtype,
    fft_flops,
    negacyclic_fft,
    negacyclic_ifft,
)


def _spectra(g: torch.Tensor, h: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The operators C_N(gᵢ) and Z₋₁(hᵢ) as spectra: rfft(g) and the negacyclic spectrum of h."""
    return torch.fft.rfft(g.to(dtype)), negacyclic_fft(h.to(dtype), g.shape[-1])


def _ldr_grads(
    spectra: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor | None,
    grad_y: torch.Tensor,
    needs: Sequence[bool],
    dtypes: Sequence[torch.dtype],
    shape: tuple[int, int],
) -> list[torch.Tensor | None]:
    """∂g, ∂h, ∂x of Σ ∂y·W(G, H)x where ``needs`` says so (else None), cast to ``dtypes``; shape (N, n).

    Recomputes uᵢ = Z₋₁(hᵢ)x from x (needed only for ∂g); ∂uᵢ = C_N(gᵢ)ᵀ ∂y feeds ∂h and ∂x.
    """
    (g_spectrum, h_spectrum), (needs_g, needs_h, needs_x), (size, in_features) = spectra, needs, shape
    dtype = g_spectrum.real.dtype
    grads: list[torch.Tensor | None] = [None, None, None]
    grad_spectrum = torch.fft.rfft(grad_y.to(dtype), n=size).unsqueeze(-2)
    if needs_g or needs_h:
        x_spectrum = negacyclic_fft(x.to(dtype), size).unsqueeze(-2)
    if needs_g:
        # ∂gᵢ = correlation of ∂y with uᵢ, spectrum Σ conj(rfft(uᵢ))·rfft(∂y), in place in rfft(uᵢ)
        u_spectrum = torch.fft.rfft(negacyclic_ifft(h_spectrum * x_spectrum, size))
        grads[0] = torch.fft.irfft(correlation_spectrum_(u_spectrum, grad_spectrum, g_spectrum.shape), n=size)
    if needs_h or needs_x:
        grad_u = torch.fft.irfft(grad_spectrum * g_spectrum.conj(), n=size)  # ∂uᵢ = C_N(gᵢ)ᵀ ∂y
        grad_u_spectrum = negacyclic_fft(grad_u, size)
        if needs_x:  # ∂x = Σᵢ Z₋₁(hᵢ)ᵀ ∂uᵢ
            grads[2] = negacyclic_ifft((grad_u_spectrum * h_spectrum.conj()).sum(-2), size)[..., :in_features]
        if needs_h:  # ∂hᵢ = negacyclic correlation of ∂uᵢ with x (last: it overwrites T(∂uᵢ))
            correlation = correlation_spectrum_(grad_u_spectrum, x_spectrum, h_spectrum.shape).conj()
            grads[1] = negacyclic_ifft(correlation, size)
    return [None if grad is None else grad.to(cast) for grad, cast in zip(grads, dtypes, strict=True)]


class LdrMatmul(torch.autograd.Function):
    """y = Σᵢ C_N(gᵢ) · Z₋₁(hᵢ) · pad(x), cut to m: W(G, H) x. g, h (r, N), x (..., n ≤ N).

    Z₋₁(hᵢ) x is pointwise in the negacyclic spectrum, C_N(gᵢ) u in the rfft one. Forward: T(x), r
    inverse T of the uᵢ, r rffts and one irfft, all of length N. Saves only x and the spectra of g, h.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, g: torch.Tensor, h: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
        size = g.shape[-1]
        g_spectrum, h_spectrum = _spectra(g, h, fft_dtype(g, h, x))
        u = negacyclic_ifft(h_spectrum * negacyclic_fft(x.to(g_spectrum.real.dtype), size).unsqueeze(-2), size)
        y = torch.fft.irfft((g_spectrum * torch.fft.rfft(u)).sum(-2), n=size)[..., :out_features]
        ctx.save_for_backward(g_spectrum, h_spectrum, x if g.requires_grad or h.requires_grad else None)
        ctx.dtypes, ctx.shape = (g.dtype, h.dtype, x.dtype), (size, x.shape[-1])
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g_spectrum, h_spectrum, x = ctx.saved_tensors
        grads = _ldr_grads((g_spectrum, h_spectrum), x, grad_y, ctx.needs_input_grad[:3], ctx.dtypes, ctx.shape)
        return *grads, None


def _diagonal_prefix_sums_(buffer: torch.Tensor, sign: int) -> torch.Tensor:
    """P[a, b] = Σ_{t ≤ b} ±x[(a − b + t) mod N, t] for an N × n x (n ≤ N), with its columns reversed: P[:, ::-1] as
    a view of ``buffer``. A term whose diagonal wraps past the last row on its way to (a, b) is added times
    ``sign`` (±1).

    ``buffer`` (N + n − 1, n) holds in its last N rows x's diagonals as rows, Q[d, t] = ±x[(d + t) mod N, t]
    (times ``sign`` where d + t ≥ N, past the wrap); its first n − 1 rows are scratch. The sums run along those
    rows, contiguous, in place; the diagonals d − N of the upper triangle (the same diagonals, whose terms
    all wrap) are ``sign`` times the last n − 1 rows, copied above them; and P is their shear,
    P[a, b] = buffer[a − b + n − 1, b]: with b reversed a view of strides (n, n − 1).
    """
    rows, columns = buffer.shape
    size = rows - columns + 1
    diagonals = buffer[columns - 1 :].cumsum_(1)
    torch.mul(diagonals[size - columns + 1 :], sign, out=buffer[: columns - 1])
    return buffer.view(-1)[columns - 1 :].as_strided((size, columns), (columns, columns - 1))  # from its offset


def _reflected(v: torch.Tensor, sign: int) -> torch.Tensor:
    """ṽ with ṽ[0] = v[0], ṽ[k] = sign·v[N − k]: Z₁(v)ᵀ = Z₁(ṽ) for sign 1, Z₋₁(v)ᵀ = Z₋₁(ṽ) for −1."""
    return torch.cat([v[..., :1], sign * v[..., 1:].flip(-1)], dim=-1)


class LdrDense(torch.autograd.Function):
    """The first n ≤ N columns (N × n) of W = Σᵢ Z₁(gᵢ) Z₋₁(hᵢ) (``sign`` 1), or of
    M = Σᵢ Z₋₁(gᵢ) Z₁(hᵢ) (``sign`` −1), dense in O(r·N·n) from the displacement of rank r; their
    transpose (n × N) where ``transposed``.

    Column by column W[:, j + 1] = roll(W[:, j], 1) − 2 Σᵢ gᵢ hᵢ[N − 1 − j] (Z₁W − WZ₋₁ = 2 Σᵢ gᵢ
    reverse(hᵢ)ᵀ), so these columns are the prefix sums along wrapped diagonals of
    F = [c | −2 Σᵢ gᵢ (hᵢ[N − 1], …, hᵢ[N − n + 1])] = [c | Gᵀ]·[e₀ | −2 H̄], with the first column
    c given (its gradient flows on through the product that made it); M's are the same with
    +2 and each term negated where it wraps (the skew-circulant Z₋₁ on the left). F's diagonals are
    Hankel: Q[d, t] = ±Σᵢ gᵢ[(d + t) mod N]·(−2 hᵢ[N − t]), r products of a strided view of gᵢ
    (``_diagonal_prefix_sums_``). The backward needs the suffix sums along the diagonals of ∂W: the prefix
    sums of ∂W rotated by 180°, rotated back. Saves only g and h.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        first_column: torch.Tensor,
        g: torch.Tensor,
        h: torch.Tensor,
        columns: int,
        sign: int,
        transposed: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(g, h)
        ctx.sign, ctx.transposed = sign, transposed
        rank, size = g.shape
        buffer = g.new_empty(size + columns - 1, columns)
        diagonals = buffer[columns - 1 :]
        # gᵢ continued past N times sign (the wrap), as the Hankel rows gᵢ[d … d + n − 1] of each diagonal d
        continued = torch.cat([g, sign * g[:, : columns - 1]], dim=1)
        # −2 hᵢ[N − t] for t = 1 … n − 1, after a 0 for t = 0 (column 0 is c, set below)
        weights = nn.functional.pad(-2 * sign * h[:, size - columns + 1 :].flip(-1), (1, 0))
        for i in range(rank):
            hankel = continued[i].as_strided((size, columns), (1, 1))  # gᵢ[d + t]
            if i == 0:
                torch.mul(hankel, weights[0], out=diagonals)
            else:
                diagonals.addcmul_(hankel, weights[i])
        diagonals[:, 0] = first_column
        reversed_columns = _diagonal_prefix_sums_(buffer, sign)
        if not transposed:  # flip keeps the order of the view's strides: row-major here, column-major for .T
            return reversed_columns.flip(-1)
        return reversed_columns.T.index_select(0, torch.arange(columns - 1, -1, -1, device=g.device))  # row-major

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_dense: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (g, h), sign = ctx.saved_tensors, ctx.sign
        rotated = (grad_dense.T if ctx.transposed else grad_dense).flip(0, 1)
        size, columns = rotated.shape
        # the diagonals of the rotated ∂W as rows: a strided view of it stacked on sign times its first rows
        stacked = torch.cat([rotated, sign * rotated[: columns - 1]])
        buffer = rotated.new_empty(size + columns - 1, columns)
        buffer[columns - 1 :] = stacked.as_strided((size, columns), (columns, columns + 1))
        # ∂F[a, b] = sums[N − 1 − a, n − 1 − b], so ∂F's columns reversed are sums' rows reversed
        grad_f = _diagonal_prefix_sums_(buffer, sign).flip(0)
        grad_g = -2 * sign * (grad_f[:, 1:] @ h[:, size - columns + 1 :].flip(-1).T).T
        # h[0] enters only c, and h[1 … N − n] only c too
        grad_h = nn.functional.pad(-2 * sign * (g @ grad_f[:, 1:]).flip(-1), (size - columns + 1, 0))
        return grad_f[:, 0], grad_g, grad_h, None, None, None


class LowDisplacementRank(StructuredMatrix):
    """W = Σᵢ Z₁(gᵢ) Z₋₁(hᵢ) with displacement rank ≤ ``rank``; G, H are (rank, N)."""

    def __init__(self, in_features: int, out_features: int, rank: int = 1) -> None:
        super().__init__(in_features, out_features)
        self.rank = require_positive_int("rank", rank)
        self.size = max(in_features, out_features)
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
        """The m × n block by ``LdrDense`` over N × min(m, n): W's first n columns, or for m < n its first m rows
        as the columns of Wᵀ = Σᵢ Z₋₁(h̃ᵢ) Z₁(g̃ᵢ) (``_reflected``), transposed in the same pass."""
        dtype, size = fft_dtype(self.weight_g), self.size
        g, h = self.weight_g.to(dtype), self.weight_h.to(dtype)
        if self.out_features >= self.in_features:
            first_column = circulant_matmul(g, h, size).sum(0)  # W e₀ = Σᵢ Z₁(gᵢ) hᵢ
            dense = LdrDense.apply(first_column, g, h, self.in_features, 1, False)  # N = out_features rows
        else:
            g, h = _reflected(g, 1), _reflected(h, -1)
            first_row = negacyclic_ifft((negacyclic_fft(h, size) * negacyclic_fft(g, size)).sum(0), size)
            dense = LdrDense.apply(first_row, h, g, self.out_features, -1, True)
        return dense.to(self.weight_g.dtype)

    @property
    def fft_elements_per_row(self) -> int:
        return self.rank * self.size  # the r products uᵢ = Z₋₁(hᵢ)x and their spectra

    @property
    def step_flops_per_row(self) -> float:
        # LdrMatmul, transforms of length N: T(x) twice, inverse T of uᵢ twice, rfft(uᵢ) twice, irfft
        # for y, rfft(∂y), irfft for ∂uᵢ, T(∂uᵢ) and inverse T for ∂x: 5 + 6r.
        return fft_flops(self.size, 5 + 6 * self.rank)

    @property
    def forward_flops_per_row(self) -> float:
        return fft_flops(self.size, 2 + 2 * self.rank)  # T(x), inverse T and rfft of each uᵢ, irfft for y

    @property
    def dense_flops(self) -> float:
        # LdrDense over N × min(m, n) = m × n entries: the r Hankel products, then about ten passes; for m < n
        # about seventeen (measured: 1.6–2.1× the time of the n < m case of the same size, bench/README.md
        # change 21). Both counts were fitted to the code before change 25 (a stacked copy, a scan and a select,
        # the transpose after them) and are kept, not refitted: its dense form now costs 15–40 % less.
        passes = 10 if self.out_features >= self.in_features else 17
        return (2 * self.rank + passes * DENSE_PASS_FLOPS) * self.in_features * self.out_features

    @property
    def parameter_grad_flops_per_row(self) -> float:
        return fft_flops(self.size, 2 + 4 * self.rank)  # rfft(∂y), T(x), uᵢ, rfft(uᵢ), ∂uᵢ, T(∂uᵢ)

    def parameter_grads(self, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor | None]:
        g, h = self.weight_g, self.weight_h
        spectra = _spectra(g.detach(), h.detach(), fft_dtype(g, h, x))
        needs = g.requires_grad, h.requires_grad, False
        return _ldr_grads(spectra, x, grad_y, needs, (g.dtype, h.dtype, x.dtype), (self.size, x.shape[-1]))[:2]

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return LdrMatmul.apply(self.weight_g, self.weight_h, x, self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
