"""The FFT kernels: the circulant mat-vec of the circulant and Toeplitz structures, and the
negacyclic transform of LDR's skew-circulant factor.

:func:`circulant_matmul` computes (C(c) · pad(x))[:m] with C(c) the L × L circulant whose first
column is c: each of these structures is this with its own kernel c and length L (Toeplitz
matrices embed in a circulant of length L ≥ m + n − 1, see :func:`toeplitz_kernel`).
Skew-circulant products are pointwise in the spectrum of :func:`negacyclic_fft`; LDR chains one of
each in one Function of the same scheme (``ldr.LdrMatmul``).

Its backward is written by hand: autograd's backward of ``rfft`` zero-pads the gradient to a full
complex spectrum and runs a complex inverse FFT, twice per call (input and kernel). Here a step
costs five batched real FFTs: rfft(x) and irfft in the forward; rfft(∂y), irfft for ∂x and rfft(x)
again for ∂c in the backward (plus one unbatched irfft), and saves only x for the backward.

FFTs always run in float32 (float64 when an operand is float64): bfloat16 has no FFT and float16
FFTs exist only on GPUs and only for powers of two. Results are cast back to the input dtypes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch._guards import detect_fake_mode
from torch.autograd.function import FunctionCtx, once_differentiable


def fft_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any operand is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


#: An FFT flop costs about this many matmul flops: FFTs are memory-bound where a large matmul is
#: compute-bound. Measured 10–16 on CPU (bench/layer_time.py: the circulant, Toeplitz and LDR
#: products at 768 and 4096 against the dense layer, per flop); GPUs favour matmuls more still.
FFT_FLOP_WEIGHT = 10.0


def fft_flops(size: int, transforms: float) -> float:
    """Matmul-equivalent flops of ``transforms`` real FFTs of length ``size`` on one row (2.5·L·log₂L each)."""
    return FFT_FLOP_WEIGHT * transforms * 2.5 * size * math.log2(max(size, 2))


def fast_fft_size(n: int) -> int:
    """Smallest 2^a·3^b·5^c ≥ n, a length every FFT backend handles without a slow path."""
    best = 1 << (n - 1).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


class CirculantMatmul(torch.autograd.Function):
    """y = (C(c) · pad(x))[..., :m]; c (..., L) and x (..., n ≤ L) broadcast over leading dims."""

    @staticmethod
    def forward(ctx: FunctionCtx, kernel: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
        size = kernel.shape[-1]
        dtype = fft_dtype(kernel, x)
        kernel_spectrum = torch.fft.rfft(kernel.to(dtype))
        x_spectrum = torch.fft.rfft(x.to(dtype), n=size)
        y = torch.fft.irfft(kernel_spectrum * x_spectrum, n=size)[..., :out_features]
        # x, not its spectrum: the layer's input is usually saved for backward anyway, so this costs no
        # memory, where the spectrum would add (L/n)·|x| per layer; the backward redoes rfft(x) instead.
        ctx.save_for_backward(kernel_spectrum, x if kernel.requires_grad else None)
        ctx.shapes = kernel.shape, kernel.dtype, x.shape, x.dtype
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        kernel_spectrum, x = ctx.saved_tensors
        (kernel_shape, kernel_dtype, x_shape, x_dtype), size = ctx.shapes, ctx.shapes[0][-1]
        grad_spectrum = torch.fft.rfft(grad_y.to(kernel_spectrum.real.dtype), n=size)
        grad_kernel = grad_x = None
        if ctx.needs_input_grad[1]:  # ∂x = C(c)ᵀ ∂y, the correlation with c
            grad_x = torch.fft.irfft(grad_spectrum * kernel_spectrum.conj(), n=size)[..., : x_shape[-1]]
            grad_x = grad_x.sum_to_size(x_shape).to(x_dtype)
        if ctx.needs_input_grad[0]:  # last: it overwrites grad_spectrum
            x_spectrum = torch.fft.rfft(x.to(grad_spectrum.real.dtype), n=size)
            grad_kernel = kernel_correlation_(grad_spectrum, x_spectrum, kernel_shape).to(kernel_dtype)
        return grad_kernel, grad_x, None


def correlation_spectrum_(spectrum: torch.Tensor, other: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Σ conj(spectrum)·other, summed over the broadcast dims down to ``shape``: the spectrum of the
    correlation of ``other``'s signal with ``spectrum``'s, summed over rows. Overwrites ``spectrum``
    (which must have the broadcast shape): conjugated and multiplied in place, it needs no buffer as
    large as the batch, where a product with a lazy conjugate (``other.conj()``, ``linalg.vecdot``)
    first copies that into a new one (in a profile of LDR's gradient, that copy took as long as a batched rfft)."""
    return spectrum.conj_physical_().mul_(other).sum_to_size(shape)


def kernel_correlation_(
    grad_spectrum: torch.Tensor, x_spectrum: torch.Tensor, kernel_shape: Sequence[int]
) -> torch.Tensor:
    """∂c of Σ ∂y·(C(c)·pad(x))[:m] from the rffts of ∂y and x: ∂c[s] = Σ_i ∂y_i x_(i−s) mod L, a correlation
    summed over the dims that c is broadcast along (every row of x for one kernel of shape (L,)).
    Overwrites ``grad_spectrum``, which has the broadcast shape."""
    size = kernel_shape[-1]
    correlation = correlation_spectrum_(grad_spectrum, x_spectrum, (*kernel_shape[:-1], size // 2 + 1))
    return torch.fft.irfft(correlation.conj(), n=size)


def toeplitz_correlation(grad_y: torch.Tensor, x: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """∂t of Σ ∂y·W(t)x for the m × n Toeplitz W[i, j] = t[i − j + n − 1]: the linear correlation
    a_d = Σ_i ∂y_i x_(i−d) for d = −(n − 1) … m − 1 (at t[d + n − 1]), summed over the rows.

    With N = max(m, n), the circular correlation of length N is a_d + a_(d−N) and the negacyclic one
    a_d − a_(d−N) (a Toeplitz matrix is half a circulant plus half a skew-circulant), so every lag is
    half their sum or difference: two rffts and two :func:`negacyclic_fft` of length N and no padding
    to m + n − 1, where the zero-padded correlation takes two rffts of length ≥ m + n − 1: half the
    transform length for square W.
    """
    size = max(out_features, in_features)
    spectra = [torch.fft.rfft(grad_y, n=size), torch.fft.rfft(x, n=size)]
    circular = kernel_correlation_(*spectra, (size,))
    spectra = [negacyclic_fft(grad_y, size), negacyclic_fft(x, size)]
    negacyclic = negacyclic_ifft(correlation_spectrum_(*spectra, spectra[1].shape[-1:]).conj(), size)
    lower = circular[:out_features] + negacyclic[:out_features]  # d = 0 … m − 1
    upper = circular[size - in_features + 1 :] - negacyclic[size - in_features + 1 :]  # d = −(n − 1) … −1
    return torch.cat([upper, lower]).mul_(0.5)


def circulant_matmul(kernel: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """(C(kernel) · x zero-padded to L)[..., :out_features], L = kernel.shape[-1]; O(L log L) per row of x."""
    if x.shape[-1] > kernel.shape[-1] or out_features > kernel.shape[-1]:
        raise ValueError(f"a circulant of length {kernel.shape[-1]} cannot map {x.shape[-1]} → {out_features}")
    return CirculantMatmul.apply(kernel, x, out_features)


def cached_constant(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``functools.lru_cache`` for a constant tensor of this code (a twist, a mask), as FFT plans are cached;
    bypassed while ``torch.compile`` or a fake-tensor mode traces (``torch.export``, ``make_fx``): the constant
    is then made in the graph, and fake tensors are neither cached for later real calls nor mixed with cached
    real ones."""
    cached = functools.lru_cache(maxsize=64)(function)

    @functools.wraps(function)
    def constant(*key: Any) -> torch.Tensor:
        tracing = torch.compiler.is_compiling() or detect_fake_mode() is not None
        return function(*key) if tracing else cached(*key)

    return constant


@cached_constant
def _twist(count: int, size: int, step: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """e^{i·step·πj/N} for j < ``count`` (N = ``size``), complex of real ``dtype``."""
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        angle = torch.arange(count, dtype=dtype, device=device) * (step * math.pi / size)
        return torch.polar(torch.ones_like(angle), angle)


def negacyclic_fft(x: torch.Tensor, size: int) -> torch.Tensor:
    """T(x)_k = Σ_j x_j e^{−iπj(2k+1)/N} of real x zero-padded to N = ``size``: the DFT at the roots of z^N = −1.

    In it skew-circulant (negacyclic) products are pointwise: T(Z₋₁(h) x) = T(h)·T(x) and
    T(Z₋₁(h)ᵀ y) = conj(T(h))·T(y). For real x, T_{N−1−k} = conj(T_k), so even N keeps the N/2 odd
    bins k = 2p + 1: one complex FFT of length N/2 of z_j = e^{−3iπj/N}(x_j + i·x_{j+N/2}). Odd N
    keeps all N bins, one complex FFT of length N. Either way about the work of an rfft of length N.
    """
    if x.shape[-1] < size:
        x = nn.functional.pad(x, (0, size - x.shape[-1]))
    if size % 2:
        return torch.fft.fft(x * _twist(size, size, -1.0, x.dtype, x.device))
    half = size // 2
    folded = torch.complex(x[..., :half], x[..., half:]).mul_(_twist(half, size, -3.0, x.dtype, x.device))
    return torch.fft.fft(folded)


def negacyclic_ifft(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """The real x of length N = ``size`` with :func:`negacyclic_fft` (x, N) = ``spectrum``."""
    dtype, device = spectrum.real.dtype, spectrum.device
    if size % 2:
        return (torch.fft.ifft(spectrum) * _twist(size, size, 1.0, dtype, device)).real
    folded = torch.fft.ifft(spectrum).mul_(_twist(size // 2, size, 3.0, dtype, device))  # x_j + i·x_{j+N/2}
    return torch.cat([folded.real, folded.imag], dim=-1)


def toeplitz_kernel(diagonals: torch.Tensor, in_features: int, size: int) -> torch.Tensor:
    """Kernel c of length ``size`` with C(c)[:m, :n] = the Toeplitz matrix W[i, j] = t[i − j + n − 1].

    c[d] = t[d + n − 1] for the diagonals d = 0 … m − 1 and c[L + d] for d = −(n − 1) … −1; the two
    ranges do not overlap when L ≥ m + n − 1 = len(t), so the embedding is exact.
    """
    lower, upper = diagonals[..., in_features - 1 :], diagonals[..., : in_features - 1]
    gap = size - diagonals.shape[-1]
    if gap < 0:
        raise ValueError(f"a circulant of length {size} cannot hold {diagonals.shape[-1]} diagonals")
    return torch.cat([lower, lower.new_zeros(*lower.shape[:-1], gap), upper], dim=-1)


def toeplitz_diagonals(kernel: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """The m + n − 1 diagonals t that :func:`toeplitz_kernel` places in ``kernel``: its inverse, and its adjoint
    (∂t from ∂c), as the placement copies each t[k] to one entry of c."""
    size = kernel.shape[-1]
    return torch.cat([kernel[..., size - in_features + 1 :], kernel[..., :out_features]], dim=-1)
