"""The statistics that bench/step_time.py and bench/fold_rows.py report, and step_time.py's A/B of a change."""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import statistics
import sys
from pathlib import Path

import pytest
import torch

from surm_nlp.structures import base, make_structure

BENCH = Path(__file__).parents[1] / "bench"


def load_bench_script(name: str):
    """bench/<name>.py as a module; the scripts import each other as top-level modules."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


step_time = load_bench_script("step_time")
fold_rows = load_bench_script("fold_rows")
fft_chunks = load_bench_script("fft_chunks")


def test_median_interval_is_the_binomial_order_statistics() -> None:
    # n = 20: P(Bin(20, ½) ≤ 5) = 0.0207 ≤ 0.025 < P(≤ 6) = 0.0577, so X₍₆₎ and X₍₁₅₎.
    assert step_time.median_interval([float(v) for v in range(20, 0, -1)]) == (6.0, 15.0)
    # n = 6: P(Bin = 0) = 1/64 ≤ 0.025, so the extremes; n = 5: 1/32 > 0.025, no 95 % interval.
    assert step_time.median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    assert step_time.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None


def test_median_interval_covers_the_median_as_often_as_it_claims() -> None:
    rng, n, trials = random.Random(0), 20, 4000
    covered = 0
    for _ in range(trials):  # exponential samples, true median ln 2
        low, high = step_time.median_interval([rng.expovariate(1.0) for _ in range(n)])
        covered += low <= math.log(2) <= high
    assert covered / trials == pytest.approx(1 - 2 * 0.0207, abs=0.015)  # exact coverage for n = 20: 95.9 %


def test_paired_ratio_cancels_drift_shared_by_a_round() -> None:
    drift = [1.0, 1.3, 0.8, 1.1, 0.9, 1.2, 1.0]  # the machine's speed, round by round
    rows = {
        "lora r=8": {"median_s": 0.0, "times_s": [2.0 * d for d in drift], "peak_bytes": 100},
        "surm": {"median_s": 0.0, "times_s": [2.1 * d for d in drift], "peak_bytes": 98},
    }
    for row in rows.values():
        row["median_s"] = statistics.median(row["times_s"])
    step_time.add_ratios(rows, "lora r=8")
    assert rows["surm"]["paired_ratio"] == pytest.approx(1.05)
    assert rows["surm"]["paired_ratio_ci95"] == pytest.approx((1.05, 1.05))
    assert rows["surm"]["memory_vs_reference"] == pytest.approx(0.98)


def test_crossover_is_where_the_ratio_falls_below_one_for_good():
    # log-linear between the last point at ≥ 1 and the next: ratio 1.1 at 128, 0.9 at 256
    crossing = 128 + 128 * math.log(1.1) / (math.log(1.1) - math.log(0.9))
    assert fold_rows.crossover([(64, 1.3), (128, 1.1), (256, 0.9), (512, 0.8)]) == pytest.approx(crossing)
    # a noisy dip before the crossover does not count
    assert fold_rows.crossover([(64, 0.99), (128, 1.1), (256, 0.9)]) == pytest.approx(crossing)
    assert fold_rows.crossover([(64, 1.2), (128, 1.0), (256, 0.8)]) == 128
    assert fold_rows.crossover([(64, 0.9), (128, 0.8)]) is None  # folded faster throughout
    assert fold_rows.crossover([(64, 1.2), (128, 1.1)]) is None  # structured faster throughout


def test_model_crossover_is_the_fewest_rows_the_layer_folds_from():
    layer = fold_rows.surm_layer("toeplitz", None, (768, 768))
    first = fold_rows.model_crossover(layer)
    fold = [layer._folds_into_weight(torch.empty(rows, 768, device="meta")) for rows in (first - 1, first)]
    assert fold == [False, True]
    assert fold_rows.model_crossover(fold_rows.surm_layer("kronecker", None, (768, 768))) is None


def test_inference_mode_times_both_paths_and_leaves_the_layer_as_it_was():
    """In eval mode under no_grad the model crossover is where the layer starts folding its forward, and
    ``bench_inference`` times both paths, reports the layer's own choice and undoes its patch."""
    layer = fold_rows.surm_layer("circulant", None, (64, 48)).eval()
    with torch.no_grad():
        first = fold_rows.model_crossover(layer)
        fold = [layer._folds_into_weight(torch.empty(rows, 64, device="meta")) for rows in (first - 1, first)]
        timing = fold_rows.bench_inference(layer, first, repeats=2, warmup=0)
    assert first > 1 and fold == [False, True]
    assert timing["chooses"] == "folded" and all(timing[path] > 0 for path in fold_rows.PATHS["inference"])
    assert timing["folded_vs_structured"] > 0
    assert "_folds_into_weight" not in vars(layer)


def test_with_structures_of_runs_the_other_checkouts_code():
    """``step_time.py --before``: the variant's structured matrices run the other checkout's code (here this
    checkout's package loaded a second time, as ``--before`` loads one) with the same results, and the layer still
    sees a ``StructuredMatrix``; its methods that call ``super()`` work (Toeplitz's padded gradient route)."""
    structures = step_time.load_structures(Path(__file__).parents[1])
    assert structures.__name__ == "structures_before"
    torch.manual_seed(0)
    model = torch.nn.Sequential(make_structure("ldr", 12, 8, rank=2), make_structure("toeplitz", 8, 20))
    x, grad_y = torch.ones(3, 12), torch.randn(3, 20)
    reference = [model[0].to_dense(), model(x), model[1].parameter_grads(model[0](x), grad_y)]
    patched = step_time.with_structures_of(lambda m: m, structures)(model)
    for matrix, name in zip(patched, ("LowDisplacementRank", "Toeplitz"), strict=True):
        assert isinstance(matrix, step_time.StructuredMatrix) and type(matrix).__mro__[1] is getattr(structures, name)
        for method in ("forward", *step_time.PARTS):
            assert getattr(type(matrix), method) is getattr(getattr(structures, name), method)
    torch.testing.assert_close(patched[0].to_dense(), reference[0], rtol=0, atol=0)
    torch.testing.assert_close(patched(x), reference[1], rtol=0, atol=0)
    torch.testing.assert_close(patched[1].parameter_grads(patched[0](x), grad_y), reference[2], rtol=0, atol=0)


def test_fft_chunks_times_each_chunk_size_and_restores_the_library_default():
    """``fft_chunks.py``: each chunk size really splits the rows (10 rows of 24 FFT elements in chunks of 48:
    five of 2), both operations are timed against one pass, and the library's chunk size is left as it was."""
    default = base.CPU_FFT_CHUNK_ELEMENTS
    args = argparse.Namespace(
        shapes=[(16, 24)], rows=[10], structures=["circulant", "ldr"], chunk_elements=[0, 48], repeats=2, warmup=0
    )
    timed = fft_chunks.measure(args)
    assert default == base.CPU_FFT_CHUNK_ELEMENTS
    assert [(r["structure"], r["operation"], r["chunk_elements"], r["chunk_rows"]) for r in timed] == [
        (name, operation, size, rows)
        for name in ("circulant", "ldr")
        for operation in ("structured", "parameter grad")
        for size, rows in ((0, 10), (48, 2))
    ]
    assert all(r["ms"] > 0 and r["vs_one_pass"] > 0 for r in timed)
