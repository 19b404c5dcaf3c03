"""Train SURM-LoRA on a tiny Llama for a few steps under ``accelerate launch`` (DeepSpeed from its config).

Writes to ``--output_dir``: the adapter (``trainer.save_model``) and ``gathered.pt`` with fixed input ids, the
logits of the trained (gathered) model on them, before and after ``merge_adapter``, how the SURM parameters were
stored (ZeRO-3 partitioning, dtype), which dtypes the FFTs ran in and the training losses. On a CPU-only machine
DeepSpeed runs on its CPU accelerator over gloo.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import deepspeed
import torch
from clean_exit import exit_when_all_ranks_are_done
from peft import get_peft_model
from transformers import LlamaForCausalLM, TrainingArguments, training_args
from transformers.integrations import is_deepspeed_zero3_enabled

from surm_nlp import SurmConfig
from surm_nlp.trainer import SurmTrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="directory of the saved base model")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--structure", default="toeplitz")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (DeepSpeed: the model in bf16)")
    return parser.parse_args()


def random_tokens(count: int, length: int = 16) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, 100, (count, length), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids]


def fft_input_dtypes(model: torch.nn.Module, ids: torch.Tensor) -> list[str]:
    """dtypes of every rFFT / FFT input during one forward pass."""
    seen: set[str] = set()
    originals = {name: getattr(torch.fft, name) for name in ("rfft", "fft")}

    def recording(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapped(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            seen.add(str(x.dtype))
            return fn(x, *args, **kwargs)

        return wrapped

    try:
        for name, fn in originals.items():
            setattr(torch.fft, name, recording(fn))
        model(ids)
    finally:
        for name, fn in originals.items():
            setattr(torch.fft, name, fn)
    return sorted(seen)


def zero_init_adapter(model: torch.nn.Module, trainer: SurmTrainer, structure: str) -> dict[str, bool]:
    """Add an adapter inside ``deepspeed.zero.Init`` (S partitioned as it is built): is it partitioned, and ΔW = 0?"""
    with deepspeed.zero.Init(config_dict_or_path=trainer.accelerator.state.deepspeed_plugin.deepspeed_config):
        model.add_adapter("fresh", SurmConfig(structure=structure, target_modules=TARGETS))
    fresh = [p for name, p in model.named_parameters() if ".fresh." in name]
    with deepspeed.zero.GatheredParameters(fresh):
        starts_at_zero = all(bool((p == 0).all()) for p in fresh)
    return {"partitioned": all(p.numel() == 0 for p in fresh), "starts_at_zero": starts_at_zero}


def main() -> None:
    cli = parse_args()
    if cli.bf16 and not torch.cuda.is_available():  # DeepSpeed's CPU accelerator runs bf16; this check knows GPUs only
        training_args.is_torch_bf16_gpu_available = lambda: True
    args = TrainingArguments(  # before the model: under ZeRO-3, from_pretrained then builds it partitioned
        output_dir=cli.output_dir,
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        seed=0,
        bf16=cli.bf16,
        ddp_backend=None if torch.cuda.is_available() else "gloo",  # else accelerate sees 1 process on CPU
    )
    model = LlamaForCausalLM.from_pretrained(cli.base)
    model = get_peft_model(model, SurmConfig(structure=cli.structure, target_modules=TARGETS))
    trainer = SurmTrainer(model=model, args=args, train_dataset=random_tokens(16))
    trainer.train()
    trainer.save_model(cli.output_dir)

    surm = [p for name, p in model.named_parameters() if "surm_" in name]
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits.float()
        fft_dtypes = fft_input_dtypes(model, ids)
        model.merge_adapter()
        merged = model(ids).logits.float()
        model.unmerge_adapter()
    fresh = zero_init_adapter(model, trainer, cli.structure) if is_deepspeed_zero3_enabled() else None
    if trainer.is_world_process_zero():
        torch.save(
            {
                "ids": ids,
                "logits": logits,
                "merged_logits": merged,
                "fft_dtypes": fft_dtypes,
                "surm_dtypes": sorted({str(p.dtype) for p in surm}),
                "surm_numel": sum(getattr(p, "ds_numel", p.numel()) for p in surm),
                "surm_local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in surm),
                "surm_partitioned": all(hasattr(p, "ds_id") for p in surm),
                "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
                "world_size": args.world_size,
                "zero_init_adapter": fresh,
            },
            Path(cli.output_dir) / "gathered.pt",
        )


if __name__ == "__main__":
    main()
    exit_when_all_ranks_are_done()
