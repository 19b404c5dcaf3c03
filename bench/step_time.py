"""Model-level benchmark: one training step (or one inference forward) of each fine-tuning method.

Every variant is its own copy of the same randomly initialised model (RoBERTa-base shape built from
its config, no download), adapted on the same targets (query, value). The variants run interleaved
round-robin within one process, so drift in the machine's speed hits all of them alike; the table
shows the median step time, the ratio to PEFT LoRA r=8 (training) or to the base model
(inference) — of the medians, and paired: the median over rounds of this variant's step over the
reference's step in the same round, with a 95 % confidence interval — trainable parameters
(training) or all parameters (inference) and peak memory.

    python bench/step_time.py --output bench/step_time.json                   # training steps
    python bench/step_time.py --mode inference --output bench/inference.json  # merged / un-merged
    python bench/step_time.py --variants "lora r=8" "surm-lora ldr" --before ../before --time_parts  # a change
    python bench/step_time.py --variants "lora r=8" "surm-lora circulant" --compile  # eager and compiled

``--before`` runs each SURM variant (not the merged ones) also with another checkout's structures (the
A/B of a change to them in one process); ``--time_parts`` adds the time that the structures' ``to_dense``
and ``parameter_grads`` take inside the steps; ``--compile`` runs each variant also under ``torch.compile``
as "<variant> (compiled)", its ratio taken to the compiled reference, and prints compiled / eager.

Training step = forward, cross-entropy, backward, AdamW step. Peak memory: on CUDA the peak
allocated memory of each variant's step; on CPU the peak resident memory of a fresh process that
builds only that variant and runs ``--memory_steps`` steps (``--no_memory`` skips it).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from layer_time import add_device_arguments, device_name, load_structures, synchronize
from peft import C3AConfig, LoKrConfig, LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification

from surm_nlp.glue.methods import Method, apply_method, head_modules
from surm_nlp.structures import STRUCTURES, StructuredMatrix

TARGETS = ["query", "value"]
SURM_STRUCTURES = [s for s in STRUCTURES if s != "lowrank"]
SURM_RANK = {"ldr": 1}  # the structures' own options; displacement rank 1 for LDR
Build = Callable[[torch.nn.Module], torch.nn.Module]  # adapts a model copy into one variant


def peft_variant(config_class: type, **kwargs: object) -> Build:
    def build(model: torch.nn.Module) -> torch.nn.Module:
        config = config_class(target_modules=TARGETS, modules_to_save=head_modules(model), **kwargs)
        return get_peft_model(model, config)

    return build


def method_variant(method: Method) -> Build:
    return lambda model: apply_method(model, method, "bench")


def head_only(model: torch.nn.Module) -> torch.nn.Module:
    heads = head_modules(model)
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".")[0] in heads
    return model


TRAIN_VARIANTS: dict[str, Build] = {
    "head-only": head_only,
    "lora r=8": peft_variant(LoraConfig, r=8, lora_alpha=16),
    "lora r=1": peft_variant(LoraConfig, r=1, lora_alpha=2),
    "c3a 768": peft_variant(C3AConfig, block_size=768),
    "lokr r=8": peft_variant(LoKrConfig, r=8),
    "full": method_variant(Method(baseline="full")),
    **{
        f"surm-lora {s}": method_variant(Method(surm=s, rank=SURM_RANK.get(s), targets=tuple(TARGETS)))
        for s in SURM_STRUCTURES
    },
    **{f"surm-lora ldr r={r}": method_variant(Method(surm="ldr", rank=r, targets=tuple(TARGETS))) for r in (2, 4)},
    **{
        f"surm-adapter {s}": method_variant(Method(surm=s, surm_mode="adapter", rank=SURM_RANK.get(s)))
        for s in SURM_STRUCTURES
    },
}


def structured_matrices(model: torch.nn.Module) -> list[StructuredMatrix]:
    """The model's structured matrices, the S of every SURM layer and adapter."""
    return [module for module in model.modules() if isinstance(module, StructuredMatrix)]


def grads_by_transforms(build: Build) -> Build:
    """The variant with every S's gradient in folded training by its own transforms, never through the
    dense ∂S (``grads_through_dense``): the ablation of that choice, in the same run."""

    def build_by_transforms(model: torch.nn.Module) -> torch.nn.Module:
        model = build(model)
        for matrix in structured_matrices(model):
            matrix.grads_through_dense = lambda rows: False
        return model

    return build_by_transforms


#: Asked for by name (``--variants``), not in the default set.
TRAIN_ABLATIONS = {
    f"{name}, grads by transforms": grads_by_transforms(TRAIN_VARIANTS[name])
    for name in ("surm-lora ldr r=2", "surm-lora ldr r=4")
}


def with_structures_of(build: Build, structures: ModuleType) -> Build:
    """The variant with its structured matrices running another checkout's ``structures`` package
    (``--before``): the model-level A/B of a change to them. Each matrix becomes an instance of a class that
    puts that checkout's class first and this one's after it, so all the structure's code (products, dense
    forms, gradients, cost model) is the other checkout's and the layer, this checkout's, still sees a
    ``StructuredMatrix``."""

    def build_before(model: torch.nn.Module) -> torch.nn.Module:
        model = build(model)
        for matrix in structured_matrices(model):
            cls = type(matrix)
            matrix.__class__ = type(cls.__name__, (getattr(structures, cls.__name__), cls), {})
        return model

    return build_before


COMPILED = " (compiled)"  # the name suffix of a variant under --compile


def compiled(build: Build) -> Build:
    """The variant under ``torch.compile`` (default inductor backend): its forward and backward compiled, the
    optimizer step eager. Compiling happens in the first warm-up step."""
    return lambda model: torch.compile(build(model))


def merged(build: Build) -> Build:
    return lambda model: build(model).merge_and_unload()


INFERENCE_VARIANTS: dict[str, Build] = {
    "base": lambda model: model,
    "lora r=8": TRAIN_VARIANTS["lora r=8"],
    **{f"surm-lora {s}": TRAIN_VARIANTS[f"surm-lora {s}"] for s in SURM_STRUCTURES},
    **{f"surm-lora {s} merged": merged(TRAIN_VARIANTS[f"surm-lora {s}"]) for s in SURM_STRUCTURES},
}


def base_model(args: argparse.Namespace) -> torch.nn.Module:
    config = AutoConfig.for_model(args.model_type, num_labels=2)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).to(args.device, args.dtype)


def make_batch(args: argparse.Namespace, vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab_size, (args.batch_size, args.seq_len), generator=generator)
    labels = torch.randint(0, 2, (args.batch_size,), generator=generator)
    return {"input_ids": ids.to(args.device), "labels": labels.to(args.device)}


#: The structures' own work inside a step, timed with ``--time_parts``: the folded path's S (forward) and its
#: gradient by transforms (backward). Not timed: the backward of ``to_dense`` where S takes the dense ∂S route.
PARTS = ("to_dense", "parameter_grads")


class Runner:
    """One variant: its model, optimizer and one timed step."""

    def __init__(self, model: torch.nn.Module, mode: str) -> None:
        self.model, self.mode = model, mode
        self.part_seconds = dict.fromkeys(PARTS, 0.0)
        trainable = [p for p in model.parameters() if p.requires_grad]
        counted = trainable if mode == "train" else list(model.parameters())
        self.num_params = sum(p.numel() for p in counted)  # trainable ones in training, all in inference
        if mode == "train":
            model.train()
            self.optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        else:
            model.eval()

    def time_parts(self) -> None:
        """Add the time of every ``PARTS`` call of the model's structured matrices to ``part_seconds``."""
        for matrix in structured_matrices(self.model):
            for part in PARTS:
                setattr(matrix, part, self._timed(part, getattr(matrix, part)))

    def _timed(self, part: str, function: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.part_seconds[part] += time.perf_counter() - start
            return result

        return timed

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        if self.mode == "train":
            self.model(**batch).loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                self.model(input_ids=batch["input_ids"])


def build_runners(args: argparse.Namespace, variants: dict) -> dict[str, Runner]:
    """A runner per variant, each on its own deep copy of the base model (alike in memory layout)."""
    model = base_model(args)
    return {name: Runner(variants[name](copy.deepcopy(model)), args.mode) for name in args.variants}


def time_steps(args: argparse.Namespace, runners: dict[str, Runner], batch: dict) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    peak: dict[str, int] = {}
    for i in range(args.warmup + args.repeats):
        if i == args.warmup:
            for runner in runners.values():
                runner.part_seconds = dict.fromkeys(PARTS, 0.0)
        for name, runner in runners.items():
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            synchronize(args.device)
            start = time.perf_counter()
            runner.step(batch)
            synchronize(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
            if args.device.startswith("cuda"):
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
    return {
        name: {
            "median_s": statistics.median(t),
            "params": runners[name].num_params,
            "peak_bytes": peak.get(name),
            "times_s": t,
            **(
                {f"{part}_ms_per_step": 1e3 * runners[name].part_seconds[part] / args.repeats for part in PARTS}
                if args.time_parts
                else {}
            ),
        }
        for name, t in times.items()
    }


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval for the median: the order statistics X₍ₖ₎, X₍ₙ₊₁₋ₖ₎ with
    P(Binomial(n, ½) < k) ≤ (1 − confidence)/2, k as large as that allows; None below 6 values at 95 %."""
    ordered, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while tail + math.comb(n, k) / 2**n <= (1 - confidence) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def paired_ratio(times: list[float], reference_times: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The median over rounds of times[i] / reference_times[i] (same round), and its 95 % interval."""
    ratios = [t / ref for t, ref in zip(times, reference_times, strict=True)]
    return statistics.median(ratios), median_interval(ratios)


def format_ratio(ratio: float, interval: tuple[float, float] | None) -> str:
    """``1.031 [1.016, 1.045]``, without the brackets where there is no interval."""
    return f"{ratio:.3f}" + (" [{:.3f}, {:.3f}]".format(*interval) if interval else "")


def add_ratios(rows: dict[str, dict], reference: str) -> None:
    """Each row's ratio to ``reference``: of the medians, and paired, the median over rounds of
    (this step / the reference's step in the same round) with its 95 % interval. Rounds are
    interleaved, so the paired ratio cancels the machine's drift that widens the medians' ratio. A compiled
    row (``--compile``) is taken to the compiled reference."""
    for name, row in rows.items():
        own = f"{reference}{COMPILED}" if name.endswith(COMPILED) else reference
        if own not in rows:
            continue
        row["vs_reference"] = row["median_s"] / rows[own]["median_s"]
        row["paired_ratio"], row["paired_ratio_ci95"] = paired_ratio(row["times_s"], rows[own]["times_s"])
        if row["peak_bytes"] and rows[own]["peak_bytes"]:
            row["memory_vs_reference"] = row["peak_bytes"] / rows[own]["peak_bytes"]


def cpu_peak_memory(args: argparse.Namespace, variant: str) -> int:
    """Peak resident bytes of a fresh process that builds ``variant`` and runs ``--memory_steps`` steps."""
    command = [
        sys.executable, __file__, "--memory_child", "--mode", args.mode, "--model_type", args.model_type,
        "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len), "--dtype", str(args.dtype).split(".")[1],
        "--memory_steps", str(args.memory_steps), "--variants", variant,
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(output.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace, variants: dict) -> None:
    runners = build_runners(args, variants)
    (runner,) = runners.values()
    batch = make_batch(args, runner.model.config.vocab_size)
    for _ in range(args.memory_steps):
        runner.step(batch)
    print(peak_resident_bytes())


def peak_resident_bytes() -> int:
    """This process's peak resident memory: VmHWM on Linux (reset by exec, unlike ru_maxrss), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.is_file():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["train", "inference"], default="train")
    parser.add_argument("--model_type", default="roberta", help="a transformers model type, default config")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    add_device_arguments(parser)
    parser.add_argument("--variants", nargs="+", default=None, help="default: every variant of --mode")
    parser.add_argument("--memory_steps", type=int, default=3)
    parser.add_argument("--no_memory", action="store_true", help="skip the CPU peak-memory processes")
    parser.add_argument("--memory_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--time_parts",
        action="store_true",
        help="also time the structures' to_dense and parameter_grads inside the steps (ms per step; on CPU only, "
        "where the calls are synchronous)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of the code before a change to surm_nlp/structures: each SURM variant also runs as "
        "'<variant> (before)' with that code's structured products, dense forms and parameter gradients",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also run each variant under torch.compile, as '<variant> (compiled)' (no peak memory for these: on "
        "CPU a fresh process's peak would be the compiler's)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    if args.time_parts and args.device.startswith("cuda"):
        parser.error("--time_parts times CPU calls; on CUDA they return before the kernels finish")
    if args.time_parts and args.compile:
        parser.error("--time_parts wraps Python methods, which a compiled graph does not call: not with --compile")
    if args.compile and args.warmup < 1:
        parser.error("--compile compiles in the first warm-up step, which would otherwise be timed: --warmup 1 or more")
    defaults = TRAIN_VARIANTS if args.mode == "train" else INFERENCE_VARIANTS
    variants = defaults | TRAIN_ABLATIONS if args.mode == "train" else dict(defaults)
    args.variants = args.variants or list(defaults)
    unknown = sorted(set(args.variants) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(variants)}")
    if args.memory_child:
        return memory_child(args, variants)
    if args.before:
        structures = load_structures(args.before)
        changed = [name for name in args.variants if name.startswith("surm") and not name.endswith(" merged")]
        variants |= {f"{name} (before)": with_structures_of(variants[name], structures) for name in changed}
        args.variants += [f"{name} (before)" for name in changed]
        args.no_memory = True  # the memory processes build variants by name, without the other checkout
    if args.compile:
        # each variant compiles the same frames (the PEFT model's forward) again: more than dynamo's default 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.variants))
        variants |= {f"{name}{COMPILED}": compiled(variants[name]) for name in args.variants}
        args.variants += [f"{name}{COMPILED}" for name in args.variants]

    runners = build_runners(args, variants)
    if args.time_parts:
        for runner in runners.values():
            runner.time_parts()
    batch = make_batch(args, next(iter(runners.values())).model.config.vocab_size)
    rows = time_steps(args, runners, batch)
    del runners
    if not args.device.startswith("cuda") and not args.no_memory:
        for name in rows:
            if not name.endswith(COMPILED):
                rows[name]["peak_bytes"] = cpu_peak_memory(args, name)
    reference = "lora r=8" if args.mode == "train" else "base"
    add_ratios(rows, reference)

    meta = {
        "torch": torch.__version__, "device": device_name(args.device), "threads": torch.get_num_threads(),
        "mode": args.mode, "model_type": args.model_type, "batch": [args.batch_size, args.seq_len],
        "dtype": str(args.dtype), "repeats": args.repeats, "reference": reference,
        "before": str(args.before) if args.before else None, "time_parts": args.time_parts,
        "compile": args.compile,
    }  # fmt: skip
    print(json.dumps(meta))
    params = "trainable" if args.mode == "train" else "params"
    header = f"{'variant':<42} {'median s':>9} {'/' + reference:>10} {'paired [95 % CI]':>22}"
    print(f"{header} {params:>11} {'peak MiB':>9} {'mem ratio':>9}")
    for name, r in rows.items():
        ratio = f"{r['vs_reference']:.3f}" if r.get("vs_reference") else "-"
        paired = format_ratio(r["paired_ratio"], r["paired_ratio_ci95"]) if "paired_ratio" in r else "-"
        mem = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-"
        mem_ratio = f"{r['memory_vs_reference']:.3f}" if r.get("memory_vs_reference") else "-"
        print(f"{name:<42} {r['median_s']:>9.3f} {ratio:>10} {paired:>22} {r['params']:>11,} {mem:>9} {mem_ratio:>9}")
    for name, r in rows.items():
        if name.endswith(" (before)"):
            r["after_vs_before"] = paired_ratio(rows[name.removesuffix(" (before)")]["times_s"], r["times_s"])
            print(f"{name.removesuffix(' (before)'):<42} after / before {format_ratio(*r['after_vs_before'])}")
        if name.endswith(COMPILED):
            r["compiled_vs_eager"] = paired_ratio(r["times_s"], rows[name.removesuffix(COMPILED)]["times_s"])
            print(f"{name.removesuffix(COMPILED):<42} compiled / eager {format_ratio(*r['compiled_vs_eager'])}")
    if args.time_parts:
        print(f"{'variant':<42} " + " ".join(f"{part + ' ms/step':>24}" for part in PARTS))
        for name, r in rows.items():
            print(f"{name:<42} " + " ".join(f"{r[part + '_ms_per_step']:>24.1f}" for part in PARTS))
    if args.output:
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
