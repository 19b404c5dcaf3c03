"""Rank study: LoRA at increasing ranks vs SURM structures on the substitution-cipher task.

Every run fine-tunes the same frozen causal LM on the same :mod:`llama_synthetic.data` task
through ``transformers.Trainer``, adapting the same ``target_modules`` with peft's ``LoraConfig``
(rank r, lora_alpha = r, so ΔW = B A at scale 1) or ``SurmConfig`` (ΔW = α·S, α = 1). Each run
records its trainable parameters, loss curve, final train loss (mean over the last logging
window) and eval exact match (a sequence counts when every π(xᵢ) is the arg-max prediction; with
teacher forcing this equals greedy decoding, since a correct prefix is the teacher's prefix).

    python -m llama_synthetic.rank_study --preset tiny --output_dir results/rank_study
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml \\
        -m llama_synthetic.rank_study --preset llama2-7b --output_dir out/llama2-7b

Each finished run is saved as ``output_dir/runs/<name>.json`` and skipped when the study is run
again with the same settings; ``results.json`` and ``rank_study.png`` cover every finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    EvalPrediction,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    TrainingArguments,
)

from surm_nlp import SurmConfig
from surm_nlp.structures import rank_options
from surm_nlp.trainer import SurmTrainer, end_distributed_run

from .data import IGNORE_INDEX, TokenDataset, make_split, make_task

TINY_LLAMA = {  # random-initialised, 90,560 parameters with K = 64: runs on a CPU
    "initializer_range": 0.125,  # 1/√hidden: at the default 0.02 the frozen lm_head caps every logit at ±1.3
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
}
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Settings:
    """Everything that defines a run besides its adapter; a saved run is reused only if these match."""

    model_name_or_path: str | None  # None: the TINY_LLAMA config, randomly initialised
    num_symbols: int
    num_pairs: int
    train_examples: int
    eval_examples: int
    max_steps: int
    batch_size: int  # per process: the global batch is batch_size × num_processes
    learning_rate: float  # LoRA
    surm_learning_rate: float
    target_modules: tuple[str, ...]
    first_token_id: int  # symbols are drawn from [first_token_id, vocab_size)
    bos_token_id: int
    logging_steps: int
    seed: int
    bf16: bool = False
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    num_processes: int = 1  # data-parallel processes of the launch (accelerate, DeepSpeed)

    def vocab_size(self) -> int:
        """The base model's vocabulary: just the special tokens and the K symbols for the tiny Llama."""
        if self.model_name_or_path is None:
            return self.first_token_id + self.num_symbols
        return AutoConfig.from_pretrained(self.model_name_or_path).vocab_size


PRESETS: dict[str, tuple[Settings, tuple[int, ...], tuple[str, ...]]] = {
    # settings, LoRA ranks, SURM structures ("name" or "name:rank")
    "tiny": (
        Settings(
            model_name_or_path=None,
            num_symbols=64,
            num_pairs=8,
            train_examples=4096,
            eval_examples=512,
            max_steps=400,
            batch_size=32,
            learning_rate=3e-2,  # best for LoRA r = 1, 2, 4 of 3e-3, 1e-2, 3e-2, 1e-1 (1e-1 diverges)
            surm_learning_rate=3e-2,
            target_modules=LLAMA_TARGETS,
            first_token_id=1,
            bos_token_id=0,
            logging_steps=10,
            seed=0,
        ),
        (1, 2, 4, 8, 16, 64),
        ("circulant", "toeplitz", "kronecker", "ldr:1", "ldr:2", "ldr:4"),
    ),
    "llama2-7b": (
        Settings(
            model_name_or_path="meta-llama/Llama-2-7b-hf",
            num_symbols=1024,
            num_pairs=16,
            train_examples=16384,
            eval_examples=512,
            max_steps=1000,
            batch_size=8,
            learning_rate=2e-4,
            surm_learning_rate=2e-4,
            target_modules=LLAMA_TARGETS,
            first_token_id=259,  # after <unk>, <s>, </s> and the 256 byte tokens
            bos_token_id=1,
            logging_steps=10,
            seed=0,
            bf16=True,
            gradient_checkpointing=True,
        ),
        (1, 2, 4, 8, 16, 64),
        ("circulant", "toeplitz", "kronecker", "ldr:1", "ldr:2", "ldr:4"),
    ),
}


@dataclass(frozen=True)
class Run:
    method: str  # "lora" or "surm"
    structure: str  # "lowrank" for LoRA
    rank: int | None = None

    @property
    def name(self) -> str:
        base = "lora" if self.method == "lora" else f"surm_{self.structure}"
        return base if self.rank is None else f"{base}_r{self.rank}"


def parse_surm(spec: str) -> Run:
    """``"toeplitz"`` or ``"ldr:2"`` → a SURM run."""
    name, _, rank = spec.partition(":")
    options = rank_options(name, int(rank) if rank else None)  # raises on an unknown structure or a stray rank
    return Run("surm", name, options.get("rank"))


def load_model(settings: Settings) -> PreTrainedModel:
    """The frozen base model: a seeded random TINY_LLAMA, or a pretrained one (bf16 or 4-bit)."""
    if settings.model_name_or_path is None:
        torch.manual_seed(settings.seed)
        config = LlamaConfig(vocab_size=settings.vocab_size(), **TINY_LLAMA)
        return LlamaForCausalLM(config)
    kwargs: dict = {"dtype": torch.bfloat16 if settings.bf16 else torch.float32}
    if settings.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": PartialState().device}
    model = AutoModelForCausalLM.from_pretrained(settings.model_name_or_path, **kwargs)
    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model


def adapt(model: PreTrainedModel, run: Run, settings: Settings) -> PeftModel:
    targets = list(settings.target_modules)
    if run.method == "lora":
        config = LoraConfig(r=run.rank, lora_alpha=run.rank, target_modules=targets, task_type="CAUSAL_LM")
    else:
        config = SurmConfig(structure=run.structure, rank=run.rank, target_modules=targets, task_type="CAUSAL_LM")
    model.config.use_cache = False
    return get_peft_model(model, config)


def exact_match(prediction: EvalPrediction) -> dict[str, float]:
    """Sequence exact match and token accuracy of arg-max predictions (already arg-maxed) on labelled tokens."""
    predicted, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]  # token t predicts t + 1
    scored = labels != IGNORE_INDEX
    correct = predicted == labels
    return {
        "exact_match": float((correct | ~scored).all(axis=1).mean()),
        "token_accuracy": float(correct[scored].mean()),
    }


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Torch's intra-op CPU threads set to ``count`` inside the block (None: unchanged).

    The tiny preset uses one: its 64-wide matmuls gain nothing from a second thread, and measured
    runs took 10-20× longer with two threads while another process kept a core busy.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_run(run: Run, settings: Settings, output_dir: Path) -> dict:
    """Fine-tune one adapter with ``Trainer``; returns the run's record."""
    task = make_task(
        settings.num_symbols,
        settings.num_pairs,
        settings.seed,
        settings.vocab_size(),
        first_token_id=settings.first_token_id,
        bos_token_id=settings.bos_token_id,
    )
    train = TokenDataset(make_split(task, settings.train_examples, seed=settings.seed + 1))
    evaluation = TokenDataset(make_split(task, settings.eval_examples, seed=settings.seed + 2))
    args = TrainingArguments(  # before loading the model, so ZeRO-3 partitions it while loading
        output_dir=str(output_dir),  # nothing is saved there (save_strategy="no")
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate if run.method == "lora" else settings.surm_learning_rate,
        weight_decay=0.0,
        logging_steps=min(settings.logging_steps, settings.max_steps),
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        bf16=settings.bf16,
        use_cpu=not torch.cuda.is_available(),  # lets bf16 run on a CPU (tests of the 7B code path)
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        label_names=["labels"],
        disable_tqdm=True,
    )
    model = adapt(load_model(settings), run, settings)
    trainable, _ = model.get_nb_trainable_parameters()
    trainer = SurmTrainer(  # DeepSpeed-safe when only adapter weights train
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        compute_metrics=exact_match,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    start = time.perf_counter()
    with cpu_threads(1 if settings.model_name_or_path is None else None):
        trainer.train()
        metrics = trainer.evaluate()
    curve = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return {
        "name": run.name,
        "method": run.method,
        "structure": run.structure,
        "rank": run.rank,
        "trainable_params": trainable,
        "final_train_loss": curve[-1][1],
        "eval_loss": metrics["eval_loss"],
        "eval_accuracy": metrics["eval_exact_match"],
        "eval_token_accuracy": metrics["eval_token_accuracy"],
        "loss_curve": curve,
        "seconds": round(time.perf_counter() - start, 1),
        "settings": dataclasses.asdict(settings),
    }


def load_finished(path: Path, settings: Settings) -> dict | None:
    """The saved run at ``path`` if it exists and was made with ``settings``."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == json.loads(json.dumps(dataclasses.asdict(settings))) else None


def plot(runs: list[dict], path: Path) -> None:
    """Loss vs step per run (LoRA blue, darker = higher rank; SURM dashed) and final loss vs budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lora = [r for r in runs if r["method"] == "lora"]
    surm = [r for r in runs if r["method"] == "surm"]
    colors = {r["name"]: plt.get_cmap("Blues")(0.35 + 0.65 * i / max(len(lora) - 1, 1)) for i, r in enumerate(lora)}
    colors |= {r["name"]: plt.get_cmap("tab10")(1 + i % 9) for i, r in enumerate(surm)}
    fig, (curves, budget) = plt.subplots(1, 2, figsize=(13.0, 4.8))
    for run in runs:
        steps, losses = zip(*run["loss_curve"], strict=True)
        style = "-" if run["method"] == "lora" else "--"
        curves.plot(steps, losses, style, color=colors[run["name"]], label=run["name"])
        marker = "o" if run["method"] == "lora" else "s"
        budget.scatter(run["trainable_params"], run["final_train_loss"], marker=marker, color=colors[run["name"]])
        budget.annotate(run["name"], (run["trainable_params"], run["final_train_loss"]), fontsize=7)
    if lora:
        budget.plot([r["trainable_params"] for r in lora], [r["final_train_loss"] for r in lora], color="tab:blue")
    curves.set(xlabel="step", ylabel="train loss", yscale="log", title="Training loss")
    curves.legend(fontsize=7, ncol=2)
    budget.set(xscale="log", yscale="log", xlabel="trainable parameters", ylabel="final train loss")
    budget.set_title("Final train loss vs budget (circles: LoRA, squares: SURM)")
    for ax in (curves, budget):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, list[Run]]:
    settings, lora_ranks, surm = PRESETS[args.preset]
    overrides = {
        name: getattr(args, name)
        for name in ("model_name_or_path", "num_symbols", "max_steps", "learning_rate", "surm_learning_rate", "seed")
        if getattr(args, name) is not None
    }
    processes = PartialState().num_processes  # a run of another global batch is not reused
    settings = dataclasses.replace(settings, load_in_4bit=args.load_in_4bit, num_processes=processes, **overrides)
    lora_ranks = lora_ranks if args.lora_ranks is None else args.lora_ranks
    surm = surm if args.surm is None else args.surm
    runs = [Run("lora", "lowrank", r) for r in lora_ranks] + [parse_surm(spec) for spec in surm]
    return settings, runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--model_name_or_path", help="pretrained causal LM (llama2-7b preset: another checkpoint)")
    parser.add_argument("--load_in_4bit", action="store_true", help="bitsandbytes NF4 base, one GPU, no ZeRO")
    parser.add_argument("--lora_ranks", type=int, nargs="*", help="LoRA ranks to run (default: the preset's)")
    parser.add_argument("--surm", nargs="*", help="SURM structures to run, 'name' or 'name:rank' (default: preset's)")
    parser.add_argument("--num_symbols", type=int, help="K, the cipher's alphabet size")
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("--learning_rate", type=float, help="LoRA learning rate")
    parser.add_argument("--surm_learning_rate", type=float)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.preset == "tiny" and (args.model_name_or_path or args.load_in_4bit):
        parser.error("--model_name_or_path and --load_in_4bit apply to the llama2-7b preset")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings, runs = settings_from_args(args)
    state = PartialState()
    run_dir = args.output_dir / "runs"
    records = []
    for run in runs:
        path = run_dir / f"{run.name}.json"
        record = load_finished(path, settings)
        if record is None:
            record = train_run(run, settings, run_dir)
            if state.is_main_process:
                run_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2) + "\n")
        else:
            print(f"{run.name}: finished earlier, reusing {path}")
        records.append(record)
        print(
            f"{run.name:<18} params={record['trainable_params']:>9,}  final_loss={record['final_train_loss']:.4f}"
            f"  eval_exact_match={record['eval_accuracy']:.3f}"
        )
        state.wait_for_everyone()
    if not state.is_main_process:
        return {"runs": records}
    finished = [record for path in run_dir.glob("*.json") if (record := load_finished(path, settings))]
    finished.sort(key=lambda r: (r["method"], r["structure"], r["rank"] or 0))
    report = {"settings": dataclasses.asdict(settings), "runs": finished}
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["runs"], args.output_dir / "rank_study.png")
    print(f"wrote {args.output_dir / 'results.json'} and rank_study.png")
    return report


if __name__ == "__main__":
    main()
    end_distributed_run()
