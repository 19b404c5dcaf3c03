"""FFT helpers shared by the circulant, Toeplitz and LDR structures.

FFTs always run in float32 (float64 when an operand is float64): bfloat16 has no FFT and float16
FFTs exist only on GPUs and only for powers of two. Callers cast the result back to the input dtype.
"""

from __future__ import annotations

import math

import torch


def fft_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any operand is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


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


def circular_convolve(kernel: torch.Tensor, x: torch.Tensor, size: int) -> torch.Tensor:
    """(kernel ⊛ x) of length ``size``: both zero-padded to ``size`` along the last dimension.

    Equals C(kernel) x with C the size × size circulant whose first column is ``kernel``.
    """
    dtype = fft_dtype(kernel, x)
    spectrum = torch.fft.rfft(kernel.to(dtype), n=size) * torch.fft.rfft(x.to(dtype), n=size)
    return torch.fft.irfft(spectrum, n=size)


def skew_circular_convolve(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Z₋₁(kernel) x, the skew-circulant (first column ``kernel``) times x; same length N.

    Z₋₁(h) = D⁻¹ F⁻¹ diag(F D h) F D with D = diag(ηᵏ), η = e^{iπ/N}: twist, circular
    convolution, untwist. ``kernel`` (..., N) and ``x`` (..., N) broadcast against each other.
    """
    size = x.shape[-1]
    dtype = fft_dtype(kernel, x)
    twist = torch.polar(
        torch.ones(size, device=x.device, dtype=dtype),
        torch.arange(size, device=x.device, dtype=dtype) * (math.pi / size),
    )
    spectrum = torch.fft.fft(kernel.to(dtype) * twist) * torch.fft.fft(x.to(dtype) * twist)
    return (torch.fft.ifft(spectrum) * twist.conj()).real
