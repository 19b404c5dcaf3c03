"""A ``transformers.Trainer`` that also works under DeepSpeed when only adapter weights train, and how a Trainer
script ends under ``accelerate launch``."""

from __future__ import annotations

import torch
from accelerate import PartialState
from transformers import Trainer


class SurmTrainer(Trainer):
    """``Trainer`` whose optimizer has no empty parameter group.

    When only SURM or LoRA weights train (no biases, no LayerNorm), the Trainer's no-weight-decay
    group is empty; DeepSpeed drops it after the LR scheduler has counted it, and torch ≥ 2.10 then
    fails in ``scheduler.step()`` (transformers #43692). Everything else is the plain Trainer.
    """

    def create_optimizer(self) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer()
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer


def end_distributed_run() -> None:
    """Wait for every process, then destroy the process group (as ``Accelerator.end_training`` does), before the
    interpreter's teardown: left alive, gloo has aborted runs on CPU at exit after all their work was done, and
    NCCL warns. Nothing to do in a single process."""
    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()
