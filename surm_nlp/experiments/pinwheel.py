"""Pinwheel (SURM poster: "Low-rank matrices can struggle to fit the data").

A 2-D pinwheel (Johnson et al., 2016): C spiral arms, arm k made of points at radius r ~ N(1, σ_r²),
tangential offset N(0, σ_t²), rotated by 2πk / C + rate·exp(r). It is classified by a network with
one hidden layer whose weight matrix W (n × n) is low rank or a SURM structure:

    logits = V relu(W φ(x) + b) + c,    φ(x) = √(2/n) cos(Ω x + β)

φ are n fixed random Fourier features (Ω ~ N(0, bandwidth²), β ~ U(0, 2π); the same for every
variant), so only W's structure differs. A rank-r W passes r numbers of φ(x) to the hidden layer;
circulant, Toeplitz, Kronecker and LDR matrices with as few parameters are full rank. Each variant
is trained full-batch with Adam on cross-entropy; the study reports train accuracy and loss.

    python -m surm_nlp.experiments.pinwheel --output_dir results/pinwheel
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from surm_nlp.experiments.approximation import Variant
from surm_nlp.structures import make_structure


def make_pinwheel(
    num_classes: int,
    per_class: int,
    seed: int,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (num_classes·per_class, 2) and their arm labels; deterministic given ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    polar = torch.randn(len(labels), 2, generator=generator, dtype=torch.float64)
    polar = polar * torch.tensor([radial_std, tangential_std], dtype=torch.float64) + torch.tensor([1.0, 0.0])
    angles = 2 * math.pi * labels / num_classes + rate * polar[:, 0].exp()
    cos, sin = angles.cos(), angles.sin()
    points = torch.stack([polar[:, 0] * cos - polar[:, 1] * sin, polar[:, 0] * sin + polar[:, 1] * cos], dim=1)
    return points.float(), labels


class PinwheelNet(nn.Module):
    """logits = V relu(W φ(x) + b) + c with W = ``variant`` (width × width) and fixed Fourier features φ."""

    def __init__(self, variant: Variant, width: int, num_classes: int, bandwidth: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", torch.randn(width, 2, generator=generator) * bandwidth)
        self.register_buffer("phases", torch.rand(width, generator=generator) * 2 * math.pi)
        torch.manual_seed(seed)
        self.hidden = make_structure(variant.structure, width, width, **variant.options)
        self.bias = nn.Parameter(torch.zeros(width))
        self.readout = nn.Linear(width, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        features = torch.cos(points @ self.frequencies.T + self.phases) * math.sqrt(2 / len(self.phases))
        return self.readout(torch.relu(self.hidden(features) + self.bias))


def default_variants(ranks: list[int], ldr_ranks: list[int]) -> list[Variant]:
    """Low rank at several ranks (2rn parameters) and the SURM structures (n to 2·rank·n parameters)."""
    variants = [Variant("lowrank", {"rank": r}) for r in ranks]
    variants += [Variant("circulant"), Variant("toeplitz"), Variant("kronecker")]
    return variants + [Variant("ldr", {"rank": r}) for r in ldr_ranks]


def train(model: PinwheelNet, points: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> tuple[float, float]:
    """Full-batch Adam on cross-entropy; returns the final (train loss, train accuracy)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(points), labels).backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(points)
        loss = nn.functional.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def plot(
    models: list[PinwheelNet], results: list[dict], points: torch.Tensor, labels: torch.Tensor, path: Path
) -> None:
    """Decision regions of every variant over the data's bounding box, with the training points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = points.min(0).values - 0.3, points.max(0).values + 0.3
    xs, ys = (torch.linspace(low[i], high[i], 200) for i in range(2))
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    columns = min(4, len(models))
    rows = math.ceil(len(models) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    num_classes = int(labels.max()) + 1
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    norm = matplotlib.colors.BoundaryNorm([k - 0.5 for k in range(cmap.N + 1)], cmap.N)  # class k → color k
    for ax, model, result in zip(axes.flat, models, results, strict=False):
        with torch.no_grad():
            regions = model(grid).argmax(1).reshape(len(ys), len(xs))
        ax.contourf(xs, ys, regions, levels=[k - 0.5 for k in range(num_classes + 1)], cmap=cmap, norm=norm, alpha=0.35)
        ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=cmap, norm=norm, s=4)
        ax.set_title(f"{result['label']}\n{result['structure_params']} params, acc {result['train_accuracy']:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_classes", type=int, default=10, help="pinwheel arms")
    parser.add_argument("--per_class", type=int, default=100, help="points per arm")
    parser.add_argument("--rate", type=float, default=0.5, help="twist of the arms: angle += rate·exp(radius)")
    parser.add_argument("--width", type=int, default=64, help="n: Fourier features and hidden units")
    parser.add_argument("--bandwidth", type=float, default=1.0, help="std of the Fourier frequencies Ω")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], help="low-rank ranks")
    parser.add_argument("--ldr_ranks", type=int, nargs="+", default=[1, 2], help="LDR displacement ranks")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("results/pinwheel"))
    args = parser.parse_args(argv)
    if args.num_classes < 2 or args.per_class < 1 or args.width < 2:
        parser.error("--num_classes must be ≥ 2, --per_class ≥ 1 and --width ≥ 2")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    points, labels = make_pinwheel(args.num_classes, args.per_class, args.seed, rate=args.rate)
    models, results = [], []
    for variant in default_variants(args.ranks, args.ldr_ranks):
        model = PinwheelNet(variant, args.width, args.num_classes, args.bandwidth, args.seed)
        loss, accuracy = train(model, points, labels, args.steps, args.lr)
        results.append(
            {
                "structure": variant.structure,
                "label": variant.label,
                "options": variant.options,
                "structure_params": model.hidden.num_parameters,
                "total_params": sum(p.numel() for p in model.parameters()),
                "train_loss": loss,
                "train_accuracy": accuracy,
            }
        )
        models.append(model)
        print(
            f"{variant.label:<20} W params={model.hidden.num_parameters:>5}  loss={loss:.4f}  accuracy={accuracy:.4f}"
        )
    report = {key: value for key, value in vars(args).items() if key != "output_dir"} | {"results": results}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "pinwheel.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(models, results, points, labels, args.output_dir / "pinwheel.png")
    print(f"wrote {args.output_dir / 'pinwheel.json'} and pinwheel.png")
    return report


if __name__ == "__main__":
    main()
