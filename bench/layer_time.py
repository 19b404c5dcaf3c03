"""Micro-benchmark: forward + backward of one structured matrix vs a dense matmul and LoRA r=8.

Every variant runs y = S(x), loss = (y * g).sum(), loss.backward() on an input x (rows, in)
that requires grad, as inside a network. Variants are interleaved round-robin so drift in the
machine's speed hits all of them alike; the table shows the median over ``--repeats``. With
``--dtype bfloat16`` (or float16) x and the dense layer are in that dtype and the structures and
LoRA keep float32 parameters, as the tuner keeps adapters of a half-precision model.

    python bench/layer_time.py --rows 1024 --repeats 20 --output bench/layer_time.json
    python bench/layer_time.py --device cuda --dtype bfloat16 --output bench/layer_time_cuda_bf16.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from surm_nlp.structures import STRUCTURES, make_structure

OPTIONS = {"ldr": {"rank": 1}, "lowrank": {"rank": 8}}


class Dense(torch.nn.Module):
    """The dense baseline: a full (out, in) trainable matrix."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def variants(
    in_features: int, out_features: int, structures: list[str], device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.nn.Module]:
    """Dense (in ``dtype``) and low rank r=8 (the references of the ratios) and each of ``structures``
    (float32 parameters), on ``device``."""
    built: dict[str, torch.nn.Module] = {"dense": Dense(in_features, out_features).to(device, dtype)}
    for name in dict.fromkeys([*structures, "lowrank"]):
        options = OPTIONS.get(name, {})
        label = f"{name} r={options['rank']}" if "rank" in options else name
        built[label] = make_structure(name, in_features, out_features, **options).to(device)
    return built


def synchronize(device: torch.device | str) -> None:
    """Wait for the GPU's queued kernels, so that wall-clock time covers them (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def step(module: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> float:
    module.zero_grad(set_to_none=True)
    x.grad = None
    synchronize(x.device)
    start = time.perf_counter()
    (module(x) * upstream).sum().backward()
    synchronize(x.device)
    return time.perf_counter() - start


def bench_shape(shape: tuple[int, int], args: argparse.Namespace) -> list[dict]:
    (in_features, out_features), rows = shape, args.rows
    modules = variants(in_features, out_features, args.structures, args.device, args.dtype)
    x = torch.randn(rows, in_features, device=args.device, dtype=args.dtype, requires_grad=True)
    upstream = torch.randn(rows, out_features, device=args.device, dtype=args.dtype)
    times: dict[str, list[float]] = {label: [] for label in modules}
    for i in range(args.warmup + args.repeats):
        for label, module in modules.items():
            elapsed = step(module, x, upstream)
            if i >= args.warmup:
                times[label].append(elapsed)
    medians = {label: statistics.median(t) for label, t in times.items()}
    lora = next(label for label in modules if label.startswith("lowrank"))
    return [
        {
            "shape": f"{in_features}x{out_features}",
            "variant": label,
            "num_params": sum(p.numel() for p in module.parameters()),
            "median_ms": 1e3 * medians[label],
            "vs_dense": medians[label] / medians["dense"],
            "vs_lowrank_r8": medians[label] / medians[lora],
        }
        for label, module in modules.items()
    ]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device (default: the GPU where there is one) and --dtype of the frozen weights and activations."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def load_structures(checkout: Path) -> ModuleType:
    """``surm_nlp.structures`` of ``checkout``, imported as ``structures_before``."""
    package = checkout / "surm_nlp" / "structures"
    spec = importlib.util.spec_from_file_location(
        "structures_before", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_shape(text: str) -> tuple[int, int]:
    in_features, out_features = (int(v) for v in text.lower().split("x"))
    return in_features, out_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=[(768, 768), (768, 3072), (1024, 1024), (4096, 4096)],
        help="in x out, e.g. 768x3072",
    )
    parser.add_argument("--rows", type=int, default=1024, help="rows of the input x")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES, help="dense and lowrank always run"
    )
    add_device_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    rows = [row for shape in args.shapes for row in bench_shape(shape, args)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name(args.device)}, {args.dtype}")
    print(f"{'shape':<10} {'variant':<20} {'params':>9} {'ms':>8} {'/dense':>7} {'/LoRA8':>7}")
    for r in rows:
        print(
            f"{r['shape']:<10} {r['variant']:<20} {r['num_params']:>9} {r['median_ms']:>8.2f} "
            f"{r['vs_dense']:>7.2f} {r['vs_lowrank_r8']:>7.2f}"
        )
    if args.output:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device_name(args.device),
            "dtype": str(args.dtype),
            "rows_of_x": args.rows,
            "repeats": args.repeats,
        }
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
