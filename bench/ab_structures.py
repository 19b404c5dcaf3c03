"""Before/after of a change to ``surm_nlp/structures``, interleaved in one process.

Separate runs of the same code spread ±15 % on a shared CPU, more than most kernel changes gain.
This loads the structures package of another checkout (``--before``: a git worktree of the commit
before the change) beside this checkout's, builds each structure from both with the same
parameters, and times them alternately on the same x and ∂y, each going first in every other
round: ``parameter_grads`` (the backward of folded training, through ``WithParameterGrads``), the
structured forward + backward, ``to_dense`` without graph (the forward of folded training) and
with its backward (the dense ∂S route). It prints the median of each and the paired ratio after / before
(the median over rounds, with its 95 % interval), and checks that both give the same results.

    git worktree add ../before HEAD~1
    python bench/ab_structures.py --before ../before --output bench/ab_structures.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from layer_time import OPTIONS, load_structures, parse_shape
from step_time import format_ratio, paired_ratio

from surm_nlp import structures as after_structures


def folded_parameter_grads(matrix: torch.nn.Module, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor]:
    """S's parameter gradient as a folded layer's backward takes it: ``WithParameterGrads`` of the package that
    ``matrix`` comes from (so of either checkout), summing ``parameter_grads`` over its row chunks."""
    package = sys.modules[type(matrix).__module__.rpartition(".")[0]]
    parameters = list(matrix.parameters())
    matrix.zero_grad(set_to_none=True)
    package.WithParameterGrads.apply(torch.zeros_like(grad_y), x, matrix, 1.0, *parameters).backward(grad_y)
    return [p.grad for p in parameters]


def operations(x: torch.Tensor, grad_y: torch.Tensor) -> dict[str, Callable[[torch.nn.Module], list[torch.Tensor]]]:
    """What is timed, each returning its results for the before/after check."""
    x_leaf = x.clone().requires_grad_()

    def structured(matrix: torch.nn.Module) -> list[torch.Tensor]:
        matrix.zero_grad(set_to_none=True)
        x_leaf.grad = None
        (matrix(x_leaf) * grad_y).sum().backward()
        return [x_leaf.grad, *(p.grad for p in matrix.parameters())]

    def to_dense(matrix: torch.nn.Module) -> list[torch.Tensor]:
        with torch.no_grad():
            return [matrix.to_dense()]

    grad_dense = torch.randn(grad_y.shape[-1], x.shape[-1])

    def to_dense_backward(matrix: torch.nn.Module) -> list[torch.Tensor]:  # the dense ∂S route of folded training
        return list(torch.autograd.grad(matrix.to_dense(), list(matrix.parameters()), grad_dense))

    return {
        "parameter_grads": lambda matrix: folded_parameter_grads(matrix, x, grad_y),
        "structured fwd+bwd": structured,
        "to_dense": to_dense,
        "to_dense fwd+bwd": to_dense_backward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--structures", nargs="+", default=["circulant", "toeplitz", "ldr"])
    parser.add_argument("--shape", type=parse_shape, default=(768, 768), help="in x out")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--after_matmul",
        action="store_true",
        help="run a (rows, 4·in) × (4·in, out) matmul before each timed call, as in a model step, where the "
        "structure's work follows the model's matmuls (its data out of cache); slower than back-to-back calls",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    before_structures = load_structures(args.before)
    (in_features, out_features), rows = args.shape, []
    torch.manual_seed(0)
    x, grad_y = torch.randn(args.rows, in_features), torch.randn(args.rows, out_features)
    matmul = (torch.randn(args.rows, 4 * in_features), torch.randn(4 * in_features, out_features))
    for name in args.structures:
        after = after_structures.make_structure(name, in_features, out_features, **OPTIONS.get(name, {}))
        before = before_structures.make_structure(name, in_features, out_features, **OPTIONS.get(name, {}))
        before.load_state_dict(after.state_dict())
        for label, operation in operations(x, grad_y).items():
            results = zip(operation(after), operation(before), strict=True)
            difference = max((a - b).abs().max().item() for a, b in results)
            times: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.warmup + args.repeats):
                order = (("before", before), ("after", after))
                for version, matrix in order[:: 1 - 2 * (i % 2)]:  # alternating, so that going first cancels
                    if args.after_matmul:
                        torch.mm(*matmul)
                    start = time.perf_counter()
                    operation(matrix)
                    if i >= args.warmup:
                        times[version].append(time.perf_counter() - start)
            ratio, interval = paired_ratio(times["after"], times["before"])
            rows.append({
                "structure": name, "operation": label, "before_ms": 1e3 * statistics.median(times["before"]),
                "after_ms": 1e3 * statistics.median(times["after"]), "paired_ratio": ratio,
                "paired_ratio_ci95": interval, "max_abs_difference": difference,
            })  # fmt: skip
    after_matmul = ", each call after a matmul" if args.after_matmul else ""
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.rows} rows, shape {args.shape}{after_matmul}")
    header = f"{'structure':<20} {'operation':<20} {'before ms':>9} {'after ms':>9}"
    print(f"{header} {'after/before [95 % CI]':>24} {'max diff':>9}")
    for r in rows:
        print(
            f"{r['structure']:<20} {r['operation']:<20} {r['before_ms']:>9.2f} {r['after_ms']:>9.2f} "
            f"{format_ratio(r['paired_ratio'], r['paired_ratio_ci95']):>24} {r['max_abs_difference']:>9.1e}"
        )
    if args.output:
        meta = {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": args.rows, "shape": args.shape,
            "after_matmul": args.after_matmul,
        }  # fmt: skip
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
