"""One FSDP training step of SURM-LoRA on a tiny Llama, set up as accelerate_configs/fsdp.yaml sets it up.

Full shard, one unit per ``LlamaDecoderLayer`` (peft's policy, as the Trainer uses for PEFT models), and
``use_orig_params``. Accelerate runs FSDP on GPUs only, so run this with ``torchrun --nproc_per_node 2`` on
CPU (gloo), ``tests/`` on PYTHONPATH. Each rank trains on its share of a batch; rank 0 saves the adapter as
``Trainer.save_model`` does and writes ``fsdp.pt``: the sharded model's logits and those of an unsharded copy
trained on the whole batch.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
import torch.distributed as dist
from clean_exit import exit_when_all_ranks_are_done
from peft import get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from tiny_models import tiny_llama
from torch.distributed.fsdp import FullStateDictConfig, ShardingStrategy, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from surm_nlp import SurmConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_step(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """One SGD step on the mean next-token loss; returns the logits after it."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    with torch.no_grad():
        return model(input_ids=ids).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)
    surm = SurmConfig(structure="toeplitz", init_weights=False, target_modules=TARGETS)  # ΔW ≠ 0 from the start
    model = get_peft_model(tiny_llama(), surm)
    reference = copy.deepcopy(model)
    ids = torch.randint(3, 100, (2 * world_size, 8), generator=torch.Generator().manual_seed(0))

    os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = "LlamaDecoderLayer"  # what accelerate exports from fsdp.yaml
    sharded = FSDP(
        model,
        auto_wrap_policy=fsdp_auto_wrap_policy(model),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    train_step(sharded, ids.chunk(world_size)[rank])  # FSDP averages the gradients over the ranks
    with torch.no_grad():
        logits = sharded(input_ids=ids).logits
    full = FullStateDictConfig(rank0_only=True)  # offload_to_cpu would copy CPU tensors onto themselves
    with FSDP.state_dict_type(sharded, StateDictType.FULL_STATE_DICT, full):
        state_dict = sharded.state_dict()
    if rank == 0:
        model.save_pretrained(cli.output_dir, state_dict=state_dict)  # as Trainer.save_model does with fsdp.yaml
        torch.save(
            {
                "ids": ids,
                "logits": logits,
                "reference_logits": train_step(reference, ids),
                "units": sum(isinstance(module, FSDP) for module in sharded.modules()),
            },
            Path(cli.output_dir) / "fsdp.pt",
        )


if __name__ == "__main__":
    main()
    exit_when_all_ranks_are_done()
