"""When training folded pays, and by which gradient: one SURM-LoRA layer's step over row counts.

A SURM-LoRA layer around a frozen ``nn.Linear`` trains either folded, y = x(W₀ + αS)ᵀ (one matmul
as in the base layer, S materialised), or structured, y = W₀x + α·S(x) (the FFT or matmul product of
the structure, forward and backward). Folded, S's parameters get their gradient either by the
structure's own transforms from x and ∂y (``parameter_grads``: "transforms") or through the folded
weight, the dense ∂S = ∂yᵀx and ``to_dense``'s backward ("dense"). This times the three paths of
the real layer (forward, (y·g).sum(), backward to S and to x) for each structure, shape and number of
rows of x, interleaved, with each folded path's paired ratio to the structured one (95 % interval),
and shows which the layer chooses (``_folds_into_weight``, ``_gradient_route``). For each
structure and shape it prints the crossover, measured (where the faster folded path's ratio falls
below 1) and the layer's (from how many rows it folds): the check of ``DENSE_PASS_FLOPS`` and
``FFT_FLOP_WEIGHT``, on which only the layer's depends.

    python bench/fold_rows.py --shapes 768x768 --rows 32 128 512 1024 --output bench/fold_rows.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from layer_time import add_device_arguments, device_name, parse_shape, step
from peft import get_peft_model
from step_time import format_ratio, paired_ratio

from surm_nlp import SurmConfig
from surm_nlp.structures import STRUCTURES

#: "transforms" and "dense" are folded, S's gradient by its own transforms or through the dense ∂S.
PATHS = ("transforms", "dense", "structured")


def surm_layer(
    structure: str, rank: int | None, shape: tuple[int, int], device: str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The SURM-LoRA layer around a frozen (in, out) ``nn.Linear`` in ``dtype``, S random (not zero)."""
    config = SurmConfig(structure=structure, rank=rank, target_modules=["0"], init_weights=False)
    base = torch.nn.Sequential(torch.nn.Linear(*shape)).to(device, dtype)
    return get_peft_model(base, config).base_model.model[0]


def crossover(points: list[tuple[int, float]]) -> float | None:
    """Rows where (the faster) folded / structured falls below 1 for good: between the last point at ≥ 1 and the
    next, interpolated linearly in log ratio; None where the ratio stays on one side in the range."""
    above = [i for i, (_, ratio) in enumerate(points) if ratio >= 1]
    if not above or above[-1] == len(points) - 1:
        return None
    (rows_1, ratio_1), (rows_2, ratio_2) = points[above[-1]], points[above[-1] + 1]
    return rows_1 + (rows_2 - rows_1) * math.log(ratio_1) / (math.log(ratio_1) - math.log(ratio_2))


def model_crossover(layer: torch.nn.Module, max_rows: int = 1 << 20) -> int | None:
    """The fewest rows of x for which the layer folds in training (``_folds_into_weight``, asked
    by bisection); None if it does not fold up to ``max_rows``."""

    def folds(rows: int) -> bool:
        return layer._folds_into_weight(torch.empty(rows, layer.in_features, device="meta"))

    if not folds(max_rows):
        return None
    low, high = 0, max_rows  # folds(high), not folds(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if folds(middle) else (middle, high)
    return high


def bench_layer(layer: torch.nn.Module, rows: int, repeats: int, warmup: int) -> dict[str, object]:
    """Median seconds of each path, each folded path / structured paired by round (the order of the
    paths reversed in every other round) with its 95 % interval, and the path the layer chooses for
    an input of ``rows`` rows."""
    weight = layer.get_base_layer().weight
    x = torch.randn(rows, layer.in_features, device=weight.device, dtype=weight.dtype, requires_grad=True)
    upstream = torch.randn(rows, layer.out_features, device=weight.device, dtype=weight.dtype)
    (matrix,) = layer.surm_matrix.values()
    chooses = layer._gradient_route(matrix, rows) if layer._folds_into_weight(x) else "structured"
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for i in range(warmup + repeats):
        for path in PATHS[:: 1 - 2 * (i % 2)]:
            layer._folds_into_weight = lambda _, folds=path != "structured": folds
            layer._gradient_route = lambda _, __, route=path: route
            elapsed = step(layer, x, upstream)
            if i >= warmup:
                times[path].append(elapsed)
    del layer._folds_into_weight, layer._gradient_route
    row: dict[str, object] = {path: statistics.median(t) for path, t in times.items()}
    for path in ("transforms", "dense"):
        row[f"{path}_vs_structured"], row[f"{path}_vs_structured_ci95"] = paired_ratio(times[path], times["structured"])
    row["folded_vs_structured"] = min(row["transforms_vs_structured"], row["dense_vs_structured"])
    return {**row, "fastest": min(PATHS, key=row.__getitem__), "chooses": chooses}


def format_rows(rows: float | None) -> str:
    return "—" if rows is None else f"{rows:.0f} rows"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(768, 768)], help="in x out")
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    parser.add_argument(
        "--structures", nargs="+", default=["toeplitz", "symmetric_toeplitz", "ldr"], choices=STRUCTURES
    )
    parser.add_argument("--rank", type=int, default=None, help="displacement rank of ldr (default 1)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    add_device_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    results, crossovers = [], []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name(args.device)}, {args.dtype}")
    header = f"{'shape':<10} {'structure':<20} {'rows':>6}" + "".join(f" {path + ' ms':>14}" for path in PATHS)
    print(f"{header} {'transforms/structured [95 % CI]':>32} {'dense/structured [95 % CI]':>28} {'fastest':>10} layer")
    for shape in args.shapes:
        label = f"{shape[0]}x{shape[1]}"
        for structure in args.structures:
            layer = surm_layer(structure, args.rank if structure == "ldr" else None, shape, args.device, args.dtype)
            for rows in args.rows:
                timing = bench_layer(layer, rows, args.repeats, args.warmup)
                results.append({"shape": label, "structure": structure, "rows": rows, **timing})
                ratios = [
                    format_ratio(timing[f"{path}_vs_structured"], timing[f"{path}_vs_structured_ci95"])
                    for path in ("transforms", "dense")
                ]
                print(
                    f"{label:<10} {structure:<20} {rows:>6}"
                    + "".join(f" {1e3 * timing[path]:>14.2f}" for path in PATHS)
                    + f" {ratios[0]:>32} {ratios[1]:>28} {timing['fastest']:>10} {timing['chooses']}",
                    flush=True,
                )
            points = [(row["rows"], row["folded_vs_structured"]) for row in results[-len(args.rows) :]]
            measured, model = crossover(points), model_crossover(layer)
            crossovers.append({"shape": label, "structure": structure, "measured": measured, "model": model})
            print(
                f"{label:<10} {structure:<20} crossover: measured {format_rows(measured)}, model {format_rows(model)}"
            )
    if args.output:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device_name(args.device),
            "dtype": str(args.dtype),
            "repeats": args.repeats,
            "ldr_rank": args.rank or 1,
        }
        args.output.write_text(json.dumps({"meta": meta, "rows": results, "crossovers": crossovers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
