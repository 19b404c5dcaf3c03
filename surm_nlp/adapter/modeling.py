"""The module the ``adapters`` library builds for a :class:`SurmAdapterConfig` at each adapter location."""

from __future__ import annotations

import torch
from adapters.methods.modeling import Activation_Function_Class, Adapter
from torch import nn

from ..structures import make_structure
from .config import SurmAdapterConfig


class StructuredAffine(nn.Module):
    """y = S·x + b with S a d×d structured matrix; starts at S = 0, b = 0."""

    def __init__(self, size: int, config: SurmAdapterConfig) -> None:
        super().__init__()
        self.matrix = make_structure(config.structure, size, size, **config.structure_kwargs())
        self.matrix.reset_parameters(zero_init=True)
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix(x) + self.bias


class SurmAdapter(nn.Module):
    """A sequential bottleneck block of ``adapters`` with down- and up-projection replaced by S·x + b.

    ``adapter_down`` = [LayerNorm] → S·x + b → f and ``adapter_up`` = identity, so the block's own
    ``forward``, ``pre_forward`` and ``post_forward`` (residuals, layer norms, scaling, dropout) are
    reused from :class:`adapters.methods.modeling.Adapter` unchanged. The adapter keeps its own dtype
    (float32 by default) on a bf16/fp16 model: inputs are cast to it and outputs back.
    """

    pre_forward = Adapter.pre_forward
    post_forward = Adapter.post_forward

    def __init__(self, adapter_name: str, input_size: int, config: SurmAdapterConfig) -> None:
        super().__init__()
        self.name = adapter_name
        self.input_size = input_size
        self.add_layer_norm_before = config["ln_before"]
        self.add_layer_norm_after = config["ln_after"]
        self.adapter_residual_before_ln = config["adapter_residual_before_ln"]
        self.use_gating = False
        self.residual_before_ln = config["residual_before_ln"]
        self.original_ln_before = config["original_ln_before"]
        self.original_ln_after = config["original_ln_after"]

        layers: list[nn.Module] = []
        if self.add_layer_norm_before:
            self.adapter_norm_before = nn.LayerNorm(input_size)
            layers.append(self.adapter_norm_before)
        self.projection = StructuredAffine(input_size, config)
        self.non_linearity = Activation_Function_Class(config["non_linearity"].lower())
        self.adapter_down = nn.Sequential(*layers, self.projection, self.non_linearity)
        self.adapter_up = nn.Identity()

        scaling = config["scaling"]
        if isinstance(scaling, (int, float)):
            self.scaling = float(scaling)
        elif scaling in ("learned", "channel"):
            self.scaling = nn.Parameter(torch.ones(1 if scaling == "learned" else input_size))
        else:
            raise ValueError(f"scaling must be a float, 'learned' or 'channel'; got {scaling!r}")
        if self.add_layer_norm_after:
            self.adapter_norm_after = nn.LayerNorm(input_size)
        self.dropout = nn.Dropout(p=config["dropout"])

    def forward(
        self, x: torch.Tensor, residual_input: torch.Tensor, output_gating: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Adapter.forward`` in the adapter's dtype; returns (output, f(S·x + b), scaled update)."""
        dtype, compute = x.dtype, self.projection.bias.dtype
        outputs = Adapter.forward(self, x.to(compute), residual_input.to(compute), output_gating)
        return tuple(t.to(dtype) for t in outputs)
