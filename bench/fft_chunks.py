"""How many rows the FFT structures should take at once on CPU: ``CPU_FFT_CHUNK_ELEMENTS``.

From twice ``surm_nlp.structures.base.CPU_FFT_CHUNK_ELEMENTS`` elements of its largest FFT buffer
(``fft_elements_per_row`` a row), a structure's forward takes the rows of x in chunks of at least
that many, and so does a folded layer's parameter gradient (``WithParameterGrads``, at
``parameter_grad_elements_per_row``). This times both at each chunk size in ``--chunk_elements``
(the constant set in turn; 0: all rows at once, the reference) on the same x and ∂y, interleaved
round-robin (the order reversed in every other round): "structured" is y = S(x), (y·g).sum(),
backward to S and x; "parameter grad" is the folded layer's backward, S's parameter gradient from
x and ∂y. It prints the median of each and its paired ratio to all rows at once (95 % interval),
and checks that every chunk size gives the same gradients.

    python bench/fft_chunks.py --shapes 768x768 768x3072 3072x768 4096x4096 --rows 1024 2048 4096 \
        --repeats 10 --output bench/fft_chunks.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from ab_structures import folded_parameter_grads
from layer_time import OPTIONS, parse_shape
from step_time import format_ratio, paired_ratio

from surm_nlp.structures import StructuredMatrix, base, make_structure

FFT_STRUCTURES = ("circulant", "toeplitz", "symmetric_toeplitz", "ldr")


def operations(
    matrix: StructuredMatrix, x: torch.Tensor, grad_y: torch.Tensor
) -> dict[str, tuple[Callable[[], list], int]]:
    """The two timed calls, each returning the gradients it computed, with the FFT elements a row that it chunks by."""
    x_leaf, parameters = x.clone().requires_grad_(), list(matrix.parameters())

    def structured() -> list[torch.Tensor]:
        x_leaf.grad = None
        matrix.zero_grad(set_to_none=True)
        (matrix(x_leaf) * grad_y).sum().backward()
        return [x_leaf.grad, *(p.grad for p in parameters)]

    return {
        "structured": (structured, matrix.fft_elements_per_row),
        "parameter grad": (lambda: folded_parameter_grads(matrix, x, grad_y), matrix.parameter_grad_elements_per_row),
    }


def set_chunk_elements(size: int) -> None:
    """The library's chunk size; 0: all rows at once."""
    base.CPU_FFT_CHUNK_ELEMENTS = size or 1 << 62


def timed(call: Callable[[], list], chunk_elements: int) -> float:
    set_chunk_elements(chunk_elements)
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    """One row per structure, shape, rows, operation and chunk size; leaves the library's chunk size as it was."""
    library_default = base.CPU_FFT_CHUNK_ELEMENTS
    try:
        return list(timings(args))
    finally:
        base.CPU_FFT_CHUNK_ELEMENTS = library_default


def timings(args: argparse.Namespace) -> Iterator[dict[str, object]]:
    """The rows of ``measure``."""
    sizes = [0, *(c for c in args.chunk_elements if c)]
    for name, (in_features, out_features), rows in itertools.product(args.structures, args.shapes, args.rows):
        torch.manual_seed(0)
        matrix = make_structure(name, in_features, out_features, **OPTIONS.get(name, {}))
        x, grad_y = torch.randn(rows, in_features), torch.randn(rows, out_features)
        for label, (call, per_row) in operations(matrix, x, grad_y).items():
            set_chunk_elements(0)
            reference, chunk_rows = [g.clone() for g in call()], {}
            for size in sizes:  # every chunk size gives the same gradients
                set_chunk_elements(size)
                chunk_rows[size] = len(chunks[0][0]) if (chunks := matrix.row_chunks(per_row, x)) else rows
                for got, want in zip(call(), reference, strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
            times: dict[int, list[float]] = {size: [] for size in sizes}
            for i in range(args.warmup + args.repeats):
                for size in sizes[:: 1 - 2 * (i % 2)]:
                    elapsed = timed(call, size)
                    if i >= args.warmup:
                        times[size].append(elapsed)
            for size in sizes:
                ratio, interval = paired_ratio(times[size], times[0])
                yield {
                    "structure": name, "shape": f"{in_features}x{out_features}", "rows": rows, "operation": label,
                    "chunk_elements": size, "chunk_rows": chunk_rows[size], "ms": 1e3 * statistics.median(times[size]),
                    "vs_one_pass": ratio, "vs_one_pass_ci95": interval,
                }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(768, 3072), (4096, 4096)])
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--structures", nargs="+", choices=FFT_STRUCTURES, default=list(FFT_STRUCTURES))
    parser.add_argument("--chunk_elements", type=int, nargs="+", default=[0, 2**19, 2**20, 2**21, 2**22])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    results = measure(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    header = f"{'structure':<19} {'shape':<10} {'rows':>5} {'operation':<15} {'chunk':>9} {'rows':>5} {'ms':>8}"
    print(f"{header}  vs one pass [95 % CI]")
    for r in results:
        chunk = f"{r['chunk_elements']:,}" if r["chunk_elements"] else "one pass"
        print(
            f"{r['structure']:<19} {r['shape']:<10} {r['rows']:>5} {r['operation']:<15} {chunk:>9} "
            f"{r['chunk_rows']:>5} {r['ms']:>8.2f}  "
            f"{format_ratio(r['vs_one_pass'], r['vs_one_pass_ci95'])}"
        )
    if args.output:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats}
        args.output.write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
