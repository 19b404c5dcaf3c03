"""Paper Figure 1 (left): how well each structure approximates random PSD matrices.

For each trial a PSD matrix W = X Xᵀ / n (X an n × n standard Gaussian) is fitted in the
least-squares sense by every structure (closed form where one exists: truncated SVD for low
rank, nearest Kronecker product, diagonal means for circulant/Toeplitz; Adam for LDR), and
the relative error ‖Ŵ − W‖_F / ‖W‖_F is averaged over trials.

    python -m surm_nlp.experiments.approximation --size 64 --trials 10 --output_dir results/approximation
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from surm_nlp.structures import make_structure
from surm_nlp.structures.base import gradient_fit_


@dataclass(frozen=True)
class Variant:
    structure: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.structure} ({details})" if details else self.structure


def default_variants(size: int, ranks: list[int], ldr_ranks: list[int]) -> list[Variant]:
    """Low rank and LDR at several ranks, Kronecker at every square factor split, and the
    parameter-light circulant / Toeplitz family: budgets from ~n to a few times n."""
    variants = [Variant("lowrank", {"rank": r}) for r in ranks]
    variants += [Variant("kronecker", {"factors": (f, f)}) for f in range(2, math.isqrt(size) + 1) if size % f == 0]
    variants += [Variant(name) for name in ("circulant", "symmetric_toeplitz", "toeplitz")]
    variants += [Variant("ldr", {"rank": r}) for r in ldr_ranks]
    return variants


def random_psd(size: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return x @ x.T / size


def relative_error(variant: Variant, target: torch.Tensor, gd_steps: int) -> tuple[int, float]:
    """(num_params, ‖Ŵ − W‖_F / ‖W‖_F) of the least-squares fit of ``target`` by ``variant``."""
    size = target.shape[0]
    structure = make_structure(variant.structure, size, size, **variant.options).double()
    if variant.structure == "ldr":
        gradient_fit_(structure, target, steps=gd_steps, lr=1e-2)
    else:
        structure.fit_(target)
    with torch.no_grad():
        error = (structure.to_dense() - target).norm() / target.norm()
    return structure.num_parameters, error.item()


def run(size: int, trials: int, variants: list[Variant], seed: int, gd_steps: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    targets = [random_psd(size, generator) for _ in range(trials)]
    results = []
    for variant in variants:
        torch.manual_seed(seed)
        fits = [relative_error(variant, target, gd_steps) for target in targets]
        errors = torch.tensor([error for _, error in fits], dtype=torch.float64)
        results.append(
            {
                "structure": variant.structure,
                "label": variant.label,
                "options": variant.options,
                "num_params": fits[0][0],
                "rel_error_mean": errors.mean().item(),
                "rel_error_std": errors.std(unbiased=True).item() if trials > 1 else 0.0,
            }
        )
        print(f"{variant.label:<32} params={fits[0][0]:>6}  rel_error={errors.mean():.4f} ± {errors.std():.4f}")
    return results


def plot(results: list[dict], size: int, trials: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    for structure in dict.fromkeys(r["structure"] for r in results):
        rows = sorted((r for r in results if r["structure"] == structure), key=lambda r: r["num_params"])
        ax.errorbar(
            [r["num_params"] for r in rows],
            [r["rel_error_mean"] for r in rows],
            yerr=[r["rel_error_std"] for r in rows],
            marker="o",
            capsize=3,
            label=structure,
        )
    ax.set_xscale("log")
    ax.set_xlabel("number of parameters")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title(f"Approximating random {size}×{size} PSD matrices ({trials} trials)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="n of the n × n PSD matrices")
    parser.add_argument("--trials", type=int, default=10, help="random matrices to average over")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], help="low-rank ranks")
    parser.add_argument("--ldr_ranks", type=int, nargs="+", default=[1, 2, 4], help="LDR displacement ranks")
    parser.add_argument("--gd_steps", type=int, default=2000, help="Adam steps for structures without a closed form")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("results/approximation"))
    args = parser.parse_args(argv)
    if args.size < 2 or args.trials < 1:
        parser.error("--size must be ≥ 2 and --trials ≥ 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    variants = default_variants(args.size, args.ranks, args.ldr_ranks)
    results = run(args.size, args.trials, variants, args.seed, args.gd_steps)
    report = {
        "size": args.size,
        "trials": args.trials,
        "seed": args.seed,
        "gd_steps": args.gd_steps,
        "results": results,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "approximation.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.size, args.trials, args.output_dir / "approximation.png")
    print(f"wrote {args.output_dir / 'approximation.json'} and approximation.png")
    return report


if __name__ == "__main__":
    main()
