"""Structured matrices against independent float64 dense references (forward, gradients, structure)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from surm_nlp import STRUCTURES, make_structure
from surm_nlp.structures import STRUCTURE_CLASSES, WithParameterGrads, base, gradient_fit_, structure_options
from surm_nlp.structures.fft import (
    circulant_matmul,
    fast_fft_size,
    negacyclic_fft,
    negacyclic_ifft,
    toeplitz_correlation,
    toeplitz_diagonals,
    toeplitz_kernel,
)

# (in_features, out_features): square (even, odd), wide, tall, and degenerate vectors.
SHAPES = [(8, 8), (7, 7), (5, 12), (12, 5), (16, 48), (48, 16), (1, 6), (6, 1)]
OPTIONS = {"ldr": {"rank": 2}, "lowrank": {"rank": 3}}


def shift_matrix(size: int, f: float) -> torch.Tensor:
    """Z_f: ones on the sub-diagonal, f in the top-right corner."""
    z = torch.zeros(size, size, dtype=torch.float64)
    z[1:, :-1] = torch.eye(size - 1, dtype=torch.float64)
    z[0, -1] = f
    return z


def f_circulant(v: torch.Tensor, f: float) -> torch.Tensor:
    """Z_f(v) = Σₖ vₖ Z_fᵏ, built from matrix powers (independent of the FFT code)."""
    z = shift_matrix(v.numel(), f)
    return sum(v[k] * torch.linalg.matrix_power(z, k) for k in range(v.numel()))


def reference_dense(s: torch.nn.Module) -> torch.Tensor:
    """W from the definition of each structure, differentiable in the parameters."""
    m, n = s.out_features, s.in_features
    name = type(s).__name__
    if name == "Circulant":
        full = torch.stack([torch.roll(s.weight, j) for j in range(s.fft_size)], dim=1)
        return full[:m, :n]
    if name == "Toeplitz":
        return torch.stack([torch.stack([s.weight[i - j + n - 1] for j in range(n)]) for i in range(m)])
    if name == "SymmetricToeplitz":
        return torch.stack([torch.stack([s.weight[abs(i - j)] for j in range(n)]) for i in range(m)])
    if name == "Kronecker":
        a, b = s.weight_a, s.weight_b
        rows = [
            torch.stack([a[i1, j1] * b[i2, j2] for j1 in range(a.shape[1]) for j2 in range(b.shape[1])])
            for i1 in range(a.shape[0])
            for i2 in range(b.shape[0])
        ]
        return torch.stack(rows)
    if name == "LowDisplacementRank":
        full = sum(f_circulant(g, 1.0) @ f_circulant(h, -1.0) for g, h in zip(s.weight_g, s.weight_h, strict=True))
        return full[:m, :n]
    if name == "LowRank":
        return s.weight_b @ s.weight_a
    raise AssertionError(name)


def build(name: str, in_features: int, out_features: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_structure(name, in_features, out_features, **OPTIONS.get(name, {})).double()


CASES = list(itertools.product(STRUCTURES, SHAPES))


def test_public_names():
    assert STRUCTURES == ("circulant", "toeplitz", "symmetric_toeplitz", "kronecker", "ldr", "lowrank")


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[f"{n}-{i}x{o}" for n, (i, o) in CASES])
def test_forward_and_dense_match_reference(name, shape):
    in_features, out_features = shape
    s = build(name, in_features, out_features)
    reference = reference_dense(s)
    assert reference.shape == (out_features, in_features)
    dense = s.to_dense()
    torch.testing.assert_close(dense, reference, rtol=1e-12, atol=1e-12)
    assert dense.is_contiguous()  # as a weight's: W₀ + S must not transpose
    # a new tensor, which a folding layer may overwrite: no storage shared with the parameters
    assert all(dense.untyped_storage().data_ptr() != p.untyped_storage().data_ptr() for p in s.parameters())
    x = torch.randn(2, 3, in_features, dtype=torch.float64)
    y = s(x)
    assert y.shape == (2, 3, out_features) and y.dtype == torch.float64
    torch.testing.assert_close(y, x @ reference.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[f"{n}-{i}x{o}" for n, (i, o) in CASES])
def test_gradients_match_reference(name, shape):
    in_features, out_features = shape
    s = build(name, in_features, out_features, seed=1)
    x = torch.randn(4, in_features, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, out_features, dtype=torch.float64)

    (s(x) * upstream).sum().backward()
    fast = [p.grad.clone() for p in s.parameters()] + [x.grad.clone()]
    s.zero_grad()
    x.grad = None
    ((x @ reference_dense(s).T) * upstream).sum().backward()
    exact = [p.grad for p in s.parameters()] + [x.grad]
    for got, want in zip(fast, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    weights = torch.randn(out_features, in_features, dtype=torch.float64)
    s.zero_grad()
    (s.to_dense() * weights).sum().backward()
    fast = [p.grad.clone() for p in s.parameters()]
    s.zero_grad()
    (reference_dense(s) * weights).sum().backward()
    for got, want in zip(fast, [p.grad for p in s.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert got.abs().sum() > 0


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("shape", [(4, 9), (9, 4), (5, 5)])
def test_ldr_dense_and_its_gradient_at_odd_sizes_and_other_ranks(shape, rank):
    """LDR's to_dense by the column block (in < out), by the rows as Wᵀ's columns (in > out: the signed scan and
    the odd-N negacyclic transform of its first row), square, at displacement ranks 1 and 3."""
    torch.manual_seed(rank)
    s = make_structure("ldr", *shape, rank=rank).double()
    weights = torch.randn(shape[1], shape[0], dtype=torch.float64)
    (s.to_dense() * weights).sum().backward()
    fast = [p.grad.clone() for p in s.parameters()]
    s.zero_grad()
    reference = reference_dense(s)
    torch.testing.assert_close(s.to_dense(), reference, rtol=1e-12, atol=1e-12)
    (reference * weights).sum().backward()
    for got, want in zip(fast, [p.grad for p in s.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[f"{n}-{i}x{o}" for n, (i, o) in CASES])
def test_parameter_grads_match_reference(name, shape):
    """parameter_grads(x, ∂y), what a folded layer asks for: the parameters' gradient of Σ ∂y·S(x), not ∂x."""
    in_features, out_features = shape
    s = build(name, in_features, out_features, seed=2)
    x = torch.randn(2, 3, in_features, dtype=torch.float64)
    upstream = torch.randn(2, 3, out_features, dtype=torch.float64)
    got = s.parameter_grads(x, upstream)
    ((x @ reference_dense(s).T) * upstream).sum().backward()
    for g, p in zip(got, s.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
    next(s.parameters()).requires_grad_(False)
    frozen_first = s.parameter_grads(x, upstream)
    assert frozen_first[0] is None
    for g, p in zip(frozen_first[1:], list(s.parameters())[1:], strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 6), (5, 12), (12, 5)])
@pytest.mark.parametrize("name", ["circulant", "toeplitz", "symmetric_toeplitz", "ldr"])
def test_rows_in_chunks_match_reference(name, shape, monkeypatch):
    """Past CPU_FFT_CHUNK_ELEMENTS the FFT structures take rows in chunks (here of at least 3 rows at each
    operation's elements per row: 4, 3, 3 of 10): the product, its gradients and a folded layer's parameter gradient
    (WithParameterGrads summing parameter_grads over the chunks) match the float64 dense reference, and did run
    in three chunks."""
    in_features, out_features = shape
    s = build(name, in_features, out_features, seed=3)
    monkeypatch.setattr(base, "CPU_FFT_CHUNK_ELEMENTS", 3 * s.fft_elements_per_row)
    chunk_rows: dict[str, list[int]] = {"product": [], "parameter_grads": []}
    for method, rows in chunk_rows.items():
        original = getattr(s, method)
        monkeypatch.setattr(s, method, lambda x, *rest, f=original, rows=rows: rows.append(len(x)) or f(x, *rest))
    x = torch.randn(2, 5, in_features, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, out_features, dtype=torch.float64)
    reference = reference_dense(s)
    y = s(x)
    torch.testing.assert_close(y, x @ reference.T, rtol=1e-10, atol=1e-12)
    (y * upstream).sum().backward()
    fast = [p.grad.clone() for p in s.parameters()] + [x.grad.clone()]
    s.zero_grad()
    x.grad = None
    ((x @ reference.T) * upstream).sum().backward()
    exact = [p.grad.clone() for p in s.parameters()] + [x.grad]
    for got, want in zip(fast, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    s.zero_grad()
    monkeypatch.setattr(base, "CPU_FFT_CHUNK_ELEMENTS", 3 * s.parameter_grad_elements_per_row)
    folded = WithParameterGrads.apply((x @ reference.T).detach(), x.detach(), s, 0.5, *s.parameters())
    (folded * upstream).sum().backward()
    for p, want in zip(s.parameters(), exact, strict=False):
        torch.testing.assert_close(p.grad, 0.5 * want, rtol=1e-10, atol=1e-12)
    assert chunk_rows == {"product": [4, 3, 3], "parameter_grads": [4, 3, 3]}
    per_row = s.parameter_grad_elements_per_row
    assert s.row_chunks(per_row, x[:1]) is None and s.row_chunks(per_row, x.to("meta")) is None  # 5 rows: 1 chunk; meta
    assert s.row_chunks(0, x) is None  # no FFT
    if name == "ldr":  # a frozen parameter (g) gets None from every chunk, the other its gradient
        s.weight_g.requires_grad_(False)
        s.zero_grad()
        WithParameterGrads.apply((x @ reference.T).detach(), x.detach(), s, 1.0, *s.parameters()).backward(upstream)
        assert s.weight_g.grad is None
        torch.testing.assert_close(s.weight_h.grad, exact[1], rtol=1e-10, atol=1e-12)


def test_fft_elements_per_row():
    """What the chunks are sized by: the kernel length L (Toeplitz's parameter gradient: its unpadded
    transforms of N = max(m, n) where it takes them), r·N for LDR, none for the matmul structures."""
    toeplitz, tall_toeplitz = make_structure("toeplitz", 6, 6), make_structure("toeplitz", 768, 3072)
    assert (toeplitz.fft_elements_per_row, toeplitz.parameter_grad_elements_per_row) == (12, 6)
    assert tall_toeplitz.parameter_grad_elements_per_row == tall_toeplitz.fft_size == 3840
    ldr = make_structure("ldr", 5, 12, rank=3)
    assert (ldr.fft_elements_per_row, ldr.parameter_grad_elements_per_row) == (36, 36)
    assert make_structure("circulant", 12, 5).fft_elements_per_row == 12
    assert [make_structure(name, 8, 8).fft_elements_per_row for name in ("kronecker", "lowrank")] == [0, 0]


@pytest.mark.parametrize("name", STRUCTURES)
def test_num_parameters(name):
    m, n = 12, 5
    expected = {
        "circulant": 12,
        "toeplitz": m + n - 1,
        "symmetric_toeplitz": 12,
        "kronecker": 3 * 1 + 4 * 5,  # A 3×1 (balanced divisors of 12 and 5), B 4×5
        "ldr": 2 * 2 * 12,
        "lowrank": 3 * (m + n),
    }[name]
    s = build(name, n, m)
    assert s.num_parameters == expected == sum(p.numel() for p in s.parameters())


def test_structural_properties():
    n = 9
    w = build("circulant", n, n).to_dense()
    for i in range(n):
        torch.testing.assert_close(w[(i + 1) % n], torch.roll(w[i], 1))

    for name in ("toeplitz", "symmetric_toeplitz"):
        w = build(name, 6, 10).to_dense()  # rectangular: constant along every diagonal
        torch.testing.assert_close(w[1:, 1:], w[:-1, :-1])
    w = build("symmetric_toeplitz", n, n).to_dense()
    torch.testing.assert_close(w, w.T)

    s = build("kronecker", 12, 8)
    (m1, n1), (m2, n2) = s.weight_a.shape, s.weight_b.shape
    rearranged = s.to_dense().reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    assert torch.linalg.matrix_rank(rearranged) == 1
    torch.testing.assert_close(s.to_dense(), torch.from_numpy(np.kron(s.weight_a.detach(), s.weight_b.detach())))

    for rank in (1, 2, 3):
        torch.manual_seed(rank)
        w = make_structure("ldr", 16, 16, rank=rank).double().to_dense().detach()
        displacement = shift_matrix(16, 1.0) @ w - w @ shift_matrix(16, -1.0)
        assert torch.linalg.matrix_rank(displacement) == rank
        assert torch.linalg.matrix_rank(w) == 16

    assert torch.linalg.matrix_rank(build("lowrank", 16, 16).to_dense().detach()) == 3


@pytest.mark.parametrize("name", ["circulant", "toeplitz", "symmetric_toeplitz", "kronecker", "ldr"])
def test_structured_matrices_can_be_full_rank(name):
    for in_features, out_features in [(16, 16), (12, 20), (20, 12)]:
        w = build(name, in_features, out_features).to_dense().detach()
        assert torch.linalg.matrix_rank(w) == min(in_features, out_features)


@pytest.mark.parametrize("name", STRUCTURES)
def test_zero_init_gives_zero_matrix_with_nonzero_gradient(name):
    s = build(name, 10, 6)
    s.reset_parameters(zero_init=True)
    assert torch.count_nonzero(s.to_dense()) == 0
    x = torch.randn(5, 10, dtype=torch.float64)
    (s(x) * torch.randn(5, 6, dtype=torch.float64)).sum().backward()
    assert any(p.grad.abs().sum() > 0 for p in s.parameters())


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("param_dtype", [torch.float32, "input"])
def test_half_precision_inputs(name, dtype, param_dtype):
    torch.manual_seed(0)
    s = make_structure(name, 24, 40, **OPTIONS.get(name, {}))
    s.to(dtype if param_dtype == "input" else param_dtype)
    x = torch.randn(3, 24).to(dtype)
    y = s(x)
    assert y.dtype == dtype and y.shape == (3, 40)
    reference = reference_dense(copy.deepcopy(s).double()).detach()
    exact = x.double() @ reference.T
    # One rounding to the half type on output (plus half-precision matmul for the matmul structures).
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    assert (y.double() - exact).abs().max() <= tolerance * exact.abs().max()
    assert (s.to_dense().double() - reference).abs().max() <= tolerance * reference.abs().max()
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in s.parameters())


@pytest.mark.parametrize("name", STRUCTURES)
def test_autocast_bfloat16_trains_close_to_float32(name):
    """Under autocast (Trainer --bf16) forward and backward run, the gradients in the parameters' dtype."""
    torch.manual_seed(0)
    s = make_structure(name, 24, 40, **OPTIONS.get(name, {}))
    x = torch.randn(6, 24, requires_grad=True)
    upstream = torch.randn(6, 40)
    (s(x) * upstream).sum().backward()
    want = [p.grad.clone() for p in s.parameters()] + [x.grad.clone()]
    s.zero_grad()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = s(x)
    (y.float() * upstream).sum().backward()
    for got, exact in zip([p.grad for p in s.parameters()] + [x.grad], want, strict=True):
        assert got.dtype == torch.float32
        assert (got - exact).norm() <= 2e-2 * exact.norm()


@pytest.mark.parametrize("name", STRUCTURES)
def test_meta_device_forward_and_backward_give_shapes(name):
    """On the meta device (shape inference, FLOP counting) every structure runs forward and backward."""
    s = make_structure(name, 16, 24, **OPTIONS.get(name, {})).to("meta")
    x = torch.empty(3, 16, device="meta", requires_grad=True)
    s(x).sum().backward()
    assert x.grad.shape == (3, 16) and all(p.grad.shape == p.shape for p in s.parameters())


@pytest.mark.parametrize("name", STRUCTURES)
def test_fit_is_least_squares(name):
    torch.manual_seed(3)
    target = torch.randn(12, 8, dtype=torch.float64)
    s = build(name, 8, 12).fit_(target)
    error = (s.to_dense() - target).norm()
    # No parameter change lowers the error: the fit is a stationary point ...
    s.zero_grad()
    (s.to_dense() - target).pow(2).sum().backward()
    if name != "ldr":  # ldr is fitted by Adam, not exactly
        assert max(p.grad.abs().max() for p in s.parameters()) < 1e-8
    # ... and gradient descent from a fresh random start does not beat it.
    descended = gradient_fit_(build(name, 8, 12, seed=4), target, steps=3000, lr=1e-2)
    assert error <= (descended.to_dense() - target).norm() + 1e-3
    if name == "lowrank":  # Eckart–Young: the error is the tail of the spectrum
        tail = torch.linalg.svdvals(target)[3:]
        torch.testing.assert_close(error, tail.norm())


@pytest.mark.parametrize("name", ["circulant", "toeplitz", "symmetric_toeplitz", "kronecker", "lowrank"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_closed_form_fit_of_half_precision_parameters_is_computed_in_float32(name, dtype):
    """A half-precision S fitted to a target of its own structure comes out as that target up to its own
    rounding: the means and SVDs run in float32 (in bfloat16 a count stops at 256; SVDs need float32)."""
    exact = build(name, 768, 768, seed=5).to(dtype)
    target = exact.to_dense().float()
    fitted = build(name, 768, 768).to(dtype).fit_(target)
    error = (fitted.to_dense().float() - target).norm() / target.norm()
    assert error < 2 * torch.finfo(dtype).eps, error


@pytest.mark.parametrize("name", STRUCTURES)
def test_wrong_input_width_is_an_error_and_an_empty_batch_gives_an_empty_output(name):
    s = build(name, 8, 12)
    for width in (5, 10):
        with pytest.raises(ValueError, match=rf"maps 8 → 12 features, but x has {width} in its last dimension"):
            s(torch.randn(3, width, dtype=torch.float64))
    x = torch.zeros(0, 8, dtype=torch.float64, requires_grad=True)
    y = s(x)
    assert y.shape == (0, 12)
    y.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in s.parameters())


def test_fit_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"expected \(out_features, in_features\) = \(12, 8\)"):
        build("circulant", 8, 12).fit_(torch.zeros(8, 12))


def test_fast_fft_size():
    def smooth(k: int) -> bool:
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        return k == 1

    for n in range(1, 2000):
        size = fast_fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(k) for k in range(n, size))


@pytest.mark.parametrize(("kernel_shape", "x_shape"), [((9,), (4, 6)), ((2, 9), (3, 1, 9)), ((2, 8), (5, 2, 3))])
def test_circulant_matmul_matches_dense_with_gradients(kernel_shape, x_shape):
    """The hand-written backward against autograd through dense circulants, with broadcasting."""
    torch.manual_seed(0)
    kernel = torch.randn(kernel_shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    out_features = kernel_shape[-1] - 2
    upstream = torch.randn((*torch.broadcast_shapes(kernel_shape[:-1], x_shape[:-1]), out_features))
    size, n = kernel_shape[-1], x_shape[-1]

    (circulant_matmul(kernel, x, out_features) * upstream).sum().backward()
    fast = kernel.grad.clone(), x.grad.clone()
    kernel.grad = x.grad = None
    dense = torch.stack([f_circulant(k, 1.0) for k in kernel.reshape(-1, size)]).reshape(*kernel_shape, size)
    want = (dense[..., :out_features, :n] @ x.unsqueeze(-1)).squeeze(-1)
    (want * upstream).sum().backward()
    torch.testing.assert_close(fast[0], kernel.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[1], x.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda k, v: circulant_matmul(k, v, out_features), (kernel, x))


@pytest.mark.parametrize("name", STRUCTURES)
def test_first_use_in_inference_mode_then_training(name):
    """What the FFT code caches (twists, LDR's mask) is made in inference mode by an evaluation that comes first;
    a later training step still gets the exact gradients."""
    s = make_structure(name, 30, 30, **OPTIONS.get(name, {})).double()  # a size no other test caches
    x = torch.randn(4, 30, dtype=torch.float64)
    with torch.inference_mode():
        s(x), s.to_dense()
    weights = torch.randn(30, 30, dtype=torch.float64)
    ((s(x) * weights[0]).sum() + (s.to_dense() * weights).sum()).backward()
    fast = [p.grad.clone() for p in s.parameters()]
    s.zero_grad()
    dense = reference_dense(s)
    ((x @ dense.T * weights[0]).sum() + (dense * weights).sum()).backward()
    for got, want in zip(fast, [p.grad for p in s.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", STRUCTURES)
def test_fake_tensor_tracing_first_leaves_no_fake_constants(name):
    """A trace with fake tensors (what torch.export and make_fx run) before the first real call: the constants the
    FFT code caches are not taken from it (a cached fake twist or mask gave LDR silently wrong results)."""
    s = make_structure(name, 26, 26, **OPTIONS.get(name, {})).double()  # a size no other test caches
    x = torch.randn(3, 26, dtype=torch.float64)
    with FakeTensorMode(allow_non_fake_inputs=True):
        s(x), s.to_dense()
    dense = reference_dense(s)
    torch.testing.assert_close(s.to_dense(), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s(x), x @ dense.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["circulant", "toeplitz", "symmetric_toeplitz", "kronecker", "ldr"])
def test_structures_save_only_x_of_batch_size(name):
    """Backward memory: x itself (shared with the base layer), no spectrum of x and no intermediate like A X."""
    s = make_structure(name, 24, 24, **OPTIONS.get(name, {}))
    x = torch.randn(16, 24, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        s(x)
    batch_sized = [t for t in saved if t.numel() >= x.numel()]
    assert batch_sized and all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in batch_sized)


def test_circulant_matmul_grad_of_one_input_only():
    torch.manual_seed(0)
    kernel, x = torch.randn(8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    for wants_kernel in (True, False):
        k, v = kernel.clone().requires_grad_(wants_kernel), x.clone().requires_grad_(not wants_kernel)
        circulant_matmul(k, v, 8).sum().backward()
        assert (k.grad is not None) == wants_kernel and (v.grad is not None) != wants_kernel


@pytest.mark.parametrize("name", ["ldr", "circulant", "kronecker"])
def test_grad_of_parameters_or_input_only(name):
    """Frozen parameters or an input without grad: the other gradients still match the dense reference."""
    x = torch.randn(3, 5, dtype=torch.float64)
    upstream = torch.randn(3, 7, dtype=torch.float64)
    for frozen in ("parameters", "input"):
        s = build(name, 5, 7)
        s.requires_grad_(frozen != "parameters")
        v = x.clone().requires_grad_(frozen != "input")
        (s(v) * upstream).sum().backward()
        reference = build(name, 5, 7)
        v_ref = x.clone().requires_grad_(True)
        ((v_ref @ reference_dense(reference).T) * upstream).sum().backward()
        got = [p.grad for p in s.parameters()] + [v.grad]
        want = [p.grad if frozen != "parameters" else None for p in reference.parameters()]
        want.append(v_ref.grad if frozen != "input" else None)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_circulant_matmul_bfloat16_runs_fft_in_float32():
    torch.manual_seed(0)
    kernel = torch.randn(16, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True)
    y = circulant_matmul(kernel, x, 16)
    y.float().sum().backward()
    assert y.dtype == kernel.grad.dtype == x.grad.dtype == torch.bfloat16
    want = x.double() @ f_circulant(kernel.detach().double(), 1.0).T
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2)


def test_circulant_matmul_rejects_short_kernel():
    with pytest.raises(ValueError, match="cannot map 9"):
        circulant_matmul(torch.zeros(8), torch.zeros(2, 9), 8)


def test_toeplitz_kernel_embeds_toeplitz():
    """C(kernel)[:m, :n] is the Toeplitz matrix W[i, j] = t[i − j + n − 1], for any L ≥ m + n − 1."""
    torch.manual_seed(0)
    m, n = 5, 7
    t = torch.randn(m + n - 1, dtype=torch.float64)
    want = torch.stack([torch.stack([t[i - j + n - 1] for j in range(n)]) for i in range(m)])
    for size in (m + n - 1, fast_fft_size(m + n - 1), 20):
        torch.testing.assert_close(f_circulant(toeplitz_kernel(t, n, size), 1.0)[:m, :n], want)
    with pytest.raises(ValueError, match="cannot hold 11 diagonals"):
        toeplitz_kernel(t, n, 10)


def test_toeplitz_diagonals_inverts_and_is_the_adjoint_of_toeplitz_kernel():
    """t read back from its kernel, and ⟨toeplitz_kernel(t), c⟩ = ⟨t, toeplitz_diagonals(c)⟩ for every c (what
    a folded Toeplitz layer's parameter gradient takes it for)."""
    torch.manual_seed(0)
    for m, n, size in [(5, 7, 11), (5, 7, 16), (7, 5, 12), (1, 6, 6), (6, 1, 8)]:
        t, c = torch.randn(m + n - 1, dtype=torch.float64), torch.randn(size, dtype=torch.float64)
        torch.testing.assert_close(toeplitz_diagonals(toeplitz_kernel(t, n, size), n, m), t, rtol=0, atol=0)
        torch.testing.assert_close(toeplitz_kernel(t, n, size) @ c, t @ toeplitz_diagonals(c, n, m))


@pytest.mark.parametrize(("m", "n"), [(8, 8), (7, 7), (5, 12), (12, 5), (1, 6), (6, 1), (1, 1)])
def test_toeplitz_correlation_is_the_gradient_of_every_diagonal(m, n):
    """∂t from length-max(m, n) circular and negacyclic correlations, against the sums along the diagonals
    of the dense gradient Σ ∂yᵀx (float64; even and odd lengths, square and rectangular, leading dims)."""
    torch.manual_seed(m * n)
    x, upstream = torch.randn(2, 3, n, dtype=torch.float64), torch.randn(2, 3, m, dtype=torch.float64)
    dense = torch.einsum("...i,...j->ij", upstream, x)
    want = torch.stack([dense.diagonal(-d).sum() for d in range(1 - n, m)])  # t[d + n − 1], d = i − j
    torch.testing.assert_close(toeplitz_correlation(upstream, x, m, n), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [8, 7, 2, 1])
def test_negacyclic_fft_diagonalises_skew_circulants(size):
    """Z₋₁(h)x and Z₋₁(h)ᵀx are pointwise in the negacyclic spectrum (even N: half-length FFT; odd N: full)."""
    torch.manual_seed(size)
    h = torch.randn(size, dtype=torch.float64)
    x = torch.randn(3, max(size - 1, 1), dtype=torch.float64)  # shorter than N: zero-padded
    padded = nn.functional.pad(x, (0, size - x.shape[-1]))
    h_spectrum, x_spectrum = negacyclic_fft(h, size), negacyclic_fft(x, size)
    assert x_spectrum.shape == (3, size // 2 if size % 2 == 0 else size)
    torch.testing.assert_close(negacyclic_ifft(x_spectrum, size), padded)
    skew = f_circulant(h, -1.0)
    torch.testing.assert_close(negacyclic_ifft(h_spectrum * x_spectrum, size), padded @ skew.T)
    torch.testing.assert_close(negacyclic_ifft(h_spectrum.conj() * x_spectrum, size), padded @ skew)


def test_kronecker_factors():
    s = make_structure("kronecker", 768, 3072)
    assert s.weight_a.shape == (48, 24) and s.weight_b.shape == (64, 32)
    s = make_structure("kronecker", 768, 768, factors=(2, 3))
    assert s.weight_a.shape == (2, 3) and s.weight_b.shape == (384, 256)


def test_api_examples_from_the_docs():
    x = torch.randn(2, 768)
    assert make_structure("toeplitz", in_features=768, out_features=3072)(x).shape == (2, 3072)
    assert make_structure("ldr", in_features=768, out_features=768, rank=2).num_parameters == 2 * 2 * 768
    assert make_structure("lowrank", in_features=768, out_features=768, rank=8).num_parameters == 8 * 1536


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_structure("butterfly", 8, 8), "choose one of circulant, toeplitz, symmetric_toeplitz"),
        (lambda: make_structure("ldr", 8, 8, rank=0), "rank must be a positive integer"),
        (lambda: make_structure("lowrank", 8, 8, rank=-2), "rank must be a positive integer"),
        (lambda: make_structure("lowrank", 8, 8, rank=2.5), "rank must be a positive integer"),
        (lambda: make_structure("kronecker", 8, 12, factors=(5, 2)), "m1 dividing out_features=12"),
        (lambda: make_structure("kronecker", 8, 12, factors=(0, 2)), "leave factors=None"),
        (lambda: make_structure("kronecker", 8, 12, factors=4), "must be positive integers \\(m1, n1\\)"),
        (lambda: make_structure("kronecker", 8, 12, factors=(2, 2, 2)), "must be positive integers \\(m1, n1\\)"),
        (lambda: make_structure("circulant", 8, 8, rank=2), "its options are: none"),
        (lambda: make_structure("toeplitz", 0, 8), "in_features must be a positive integer"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_structure_options():
    assert structure_options("ldr") == ("rank",)
    assert structure_options("kronecker") == ("factors",)
    assert structure_options("circulant") == ()
    assert set(STRUCTURE_CLASSES) == set(STRUCTURES)
