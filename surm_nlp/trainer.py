"""A ``transformers.Trainer`` that also works under DeepSpeed when only adapter weights train."""

from __future__ import annotations

import torch
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
