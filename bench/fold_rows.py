"""When folding pays, and by which gradient: one SURM-LoRA layer's step (or forward) over row counts.

A SURM-LoRA layer around a frozen ``nn.Linear`` trains either folded, y = x(W₀ + αS)ᵀ (one matmul
as in the base layer, S materialised), or structured, y = W₀x + α·S(x) (the FFT or matmul product of
the structure, forward and backward). Folded, S's parameters get their gradient either by the
structure's own transforms from x and ∂y (``parameter_grads``: "transforms") or through the folded
weight, the dense ∂S = ∂yᵀx and ``to_dense``'s backward ("dense"). This times the three paths of
the real layer (forward, (y·g).sum(), backward to S and to x) for each structure, shape and number of
rows of x, interleaved, with each folded path's paired ratio to the structured one (95 % interval),
and shows which the layer chooses (``_folds_into_weight``, ``_gradient_route``) with its median time
over the fastest path's (at the end their geometric mean and the worst). For each structure and
shape it prints the crossover, measured (where the faster folded path's ratio falls below 1) and
the layer's (from how many rows it folds): the check of ``DENSE_PASS_FLOPS`` and
``FFT_FLOP_WEIGHT``, on which only the layer's depends. ``--mode inference`` times the un-merged
layer's forward in eval mode without gradients instead, folded (S materialised and added to W₀ in
every forward) against structured; ``--mode training inference`` runs both, one after the other.

    python bench/fold_rows.py --shapes 768x768 --rows 32 128 512 1024 --output bench/fold_rows.json
    python bench/fold_rows.py --mode inference --rows 16 64 256 1024 --output bench/fold_rows_inference.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from layer_time import add_device_arguments, device_name, parse_shape, step, synchronize
from peft import get_peft_model
from step_time import format_ratio, paired_ratio

from surm_nlp import SurmConfig
from surm_nlp.structures import STRUCTURES

#: The paths timed in each mode, structured (the reference of the ratios) last. In training "transforms" and
#: "dense" are folded, S's gradient by its own transforms or through the dense ∂S.
PATHS = {"training": ("transforms", "dense", "structured"), "inference": ("folded", "structured")}


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
    """The fewest rows of x for which the layer folds (``_folds_into_weight``, asked by bisection) in its
    mode and the current grad mode (training, or eval under ``torch.no_grad()`` for inference); None if it
    does not fold up to ``max_rows``."""

    def folds(rows: int) -> bool:
        return layer._folds_into_weight(torch.empty(rows, layer.in_features, device="meta"))

    if not folds(max_rows):
        return None
    low, high = 0, max_rows  # folds(high), not folds(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if folds(middle) else (middle, high)
    return high


def bench_training(layer: torch.nn.Module, rows: int, repeats: int, warmup: int) -> dict[str, object]:
    """``timed_paths`` of one training step of each path, and the path the layer chooses for ``rows`` rows."""
    weight = layer.get_base_layer().weight
    x = torch.randn(rows, layer.in_features, device=weight.device, dtype=weight.dtype, requires_grad=True)
    upstream = torch.randn(rows, layer.out_features, device=weight.device, dtype=weight.dtype)
    (matrix,) = layer.surm_matrix.values()
    chooses = layer._gradient_route(matrix, rows) if layer._folds_into_weight(x) else "structured"

    def run(path: str) -> float:
        layer._folds_into_weight = lambda _: path != "structured"
        layer._gradient_route = lambda _, __: path
        return step(layer, x, upstream)

    timing = timed_paths(run, PATHS["training"], repeats, warmup)
    del layer._folds_into_weight, layer._gradient_route
    return {**timing, "chooses": chooses}


def bench_inference(layer: torch.nn.Module, rows: int, repeats: int, warmup: int) -> dict[str, object]:
    """``timed_paths`` of the forward of each path (the layer in eval mode, under ``torch.no_grad()``), and the
    path the layer chooses for ``rows`` rows."""
    weight = layer.get_base_layer().weight
    x = torch.randn(rows, layer.in_features, device=weight.device, dtype=weight.dtype)
    chooses = "folded" if layer._folds_into_weight(x) else "structured"

    def run(path: str) -> float:
        layer._folds_into_weight = lambda _: path == "folded"
        synchronize(x.device)
        start = time.perf_counter()
        layer(x)
        synchronize(x.device)
        return time.perf_counter() - start

    timing = timed_paths(run, PATHS["inference"], repeats, warmup)
    del layer._folds_into_weight
    return {**timing, "chooses": chooses}


def timed_paths(run: Callable[[str], float], paths: tuple[str, ...], repeats: int, warmup: int) -> dict[str, object]:
    """Median seconds of ``run(path)`` for each path, run round-robin (the order reversed in every other round),
    each folded path / structured (the last) paired by round with its 95 % interval, the faster folded path's
    ratio (``folded_vs_structured``) and the fastest path."""
    times: dict[str, list[float]] = {path: [] for path in paths}
    for i in range(warmup + repeats):
        for path in paths[:: 1 - 2 * (i % 2)]:
            elapsed = run(path)
            if i >= warmup:
                times[path].append(elapsed)
    *folded, structured = paths
    row: dict[str, object] = {path: statistics.median(t) for path, t in times.items()}
    for path in folded:
        row[f"{path}_vs_structured"], row[f"{path}_vs_structured_ci95"] = paired_ratio(times[path], times[structured])
    row["folded_vs_structured"] = min(row[f"{path}_vs_structured"] for path in folded)
    return {**row, "fastest": min(paths, key=row.__getitem__)}


def format_rows(rows: float | None) -> str:
    return "—" if rows is None else f"{rows:.0f} rows"


def measure(mode: str, args: argparse.Namespace) -> tuple[list[dict], list[dict], dict[str, object]]:
    """The rows of one mode (printed as they come), the crossovers and the summary of the layer's choices."""
    paths, bench = PATHS[mode], {"training": bench_training, "inference": bench_inference}[mode]
    results, crossovers = [], []
    ratio_headers = "".join(f" {path + '/structured [95 % CI]':>32}" for path in paths[:-1])
    ms_headers = "".join(f" {path + ' ms':>14}" for path in paths)
    print(f"{mode}:")
    print(f"{'shape':<10} {'structure':<20} {'rows':>6}{ms_headers}{ratio_headers} {'fastest':>10} layer (/fastest)")
    for shape in args.shapes:
        label = f"{shape[0]}x{shape[1]}"
        for structure in args.structures:
            layer = surm_layer(structure, args.rank if structure == "ldr" else None, shape, args.device, args.dtype)
            with torch.set_grad_enabled(mode == "training"):
                layer.train(mode == "training")
                for rows in args.rows:
                    timing = bench(layer, rows, args.repeats, args.warmup)
                    timing["chosen_vs_fastest"] = timing[timing["chooses"]] / timing[timing["fastest"]]
                    results.append({"mode": mode, "shape": label, "structure": structure, "rows": rows, **timing})
                    ratios = "".join(
                        f" {format_ratio(timing[f'{path}_vs_structured'], timing[f'{path}_vs_structured_ci95']):>32}"
                        for path in paths[:-1]
                    )
                    times = "".join(f" {1e3 * timing[path]:>14.2f}" for path in paths)
                    choice = f"{timing['fastest']:>10} {timing['chooses']} ({timing['chosen_vs_fastest']:.2f})"
                    print(f"{label:<10} {structure:<20} {rows:>6}{times}{ratios} {choice}", flush=True)
                model = model_crossover(layer)
            measured = crossover([(row["rows"], row["folded_vs_structured"]) for row in results[-len(args.rows) :]])
            crossovers.append(
                {"mode": mode, "shape": label, "structure": structure, "measured": measured, "model": model}
            )
            print(
                f"{label:<10} {structure:<20} crossover: measured {format_rows(measured)}, model {format_rows(model)}"
            )
    worst = max(results, key=lambda row: row["chosen_vs_fastest"])
    summary = {
        "chosen_vs_fastest_geomean": math.exp(statistics.mean(math.log(row["chosen_vs_fastest"]) for row in results)),
        "chosen_vs_fastest_worst": worst["chosen_vs_fastest"],
        "worst_at": f"{worst['shape']} {worst['structure']} {worst['rows']} rows",
    }
    print(
        "the layer's choices: {chosen_vs_fastest_geomean:.3f}× the fastest path (geometric mean), worst "
        "{chosen_vs_fastest_worst:.2f}× ({worst_at})".format(**summary)
    )
    return results, crossovers, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", nargs="+", choices=tuple(PATHS), default=["training"], help="one run each")
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name(args.device)}, {args.dtype}")
    results, crossovers, summary = [], [], {}
    for mode in args.mode:
        mode_results, mode_crossovers, summary[mode] = measure(mode, args)
        results += mode_results
        crossovers += mode_crossovers
    if args.output:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device_name(args.device),
            "dtype": str(args.dtype),
            "modes": args.mode,
            "repeats": args.repeats,
            "ldr_rank": args.rank or 1,
        }
        output = {"meta": meta, "rows": results, "crossovers": crossovers, "summary": summary}
        args.output.write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
