"""The SURM-LoRA layer: y = W₀x + b + α·S(dropout(x)) around a frozen linear layer.

On a plain ``nn.Linear`` the layer computes x(W₀ + αS)ᵀ, one matmul as in a merged model, from a
few rows of x on; in training S's parameters then get their gradient from x and ∂y by the
structure's own transforms (``WithParameterGrads``), or through the dense ∂S where that is cheaper
(``StructuredMatrix.grads_through_dense``). Otherwise, S is applied with its fast structured product.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils.integrations import gather_params_ctx
from peft.utils.other import transpose
from peft.utils.quantization_utils import quantization_extra_repr, resolve_quantization_backend
from torch import nn
from torch.distributed.tensor import DTensor

from ..structures import StructuredMatrix, WithParameterGrads, make_structure
from ..structures.base import DENSE_PASS_FLOPS
from .config import SurmConfig


class SurmLayer(BaseTunerLayer):
    """Adapter state of one targeted layer: a structured matrix S, α and dropout per adapter."""

    adapter_layer_names = ("surm_matrix",)
    other_param_names = ("surm_dropout", "scaling", "surm_shape")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.quantization_backend = resolve_quantization_backend(
            self.get_base_layer(), get_apply_tensor_subclass=kwargs.get("get_apply_tensor_subclass")
        )
        self.surm_matrix = nn.ModuleDict({})
        self.surm_dropout = nn.ModuleDict({})
        # (in, out) of the layer, saved with the adapter: S's parameters alone may fit a layer of another shape
        # (circulant and LDR depend on max(m, n) only), so loading into another base model checks this
        self.surm_shape = BufferDict({}, persistent=True)
        self.scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if in_features is None or out_features is None:
            raise TypeError(f"Unsupported layer type {type(self.get_base_layer())}")
        self.in_features, self.out_features = in_features, out_features
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config: SurmConfig) -> None:
        matrix = make_structure(config.structure, self.in_features, self.out_features, **config.structure_kwargs())
        with gather_params_ctx(matrix.parameters()):  # built inside deepspeed.zero.Init, S is already partitioned
            matrix.reset_parameters(zero_init=config.init_weights)
        self.surm_matrix[adapter_name] = matrix
        self.surm_shape[adapter_name] = torch.tensor([self.in_features, self.out_features])
        self.surm_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling[adapter_name] = config.alpha
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """α·S as a dense tensor in the base weight's layout ((in, out) when fan_in_fan_out)."""
        return self._dense_structure(adapter) * self.scaling[adapter]

    def _dense_structure(self, adapter: str) -> torch.Tensor:
        """S, without α, as a dense tensor in the base weight's layout."""
        return transpose(self.surm_matrix[adapter].to_dense(), self.fan_in_fan_out)

    def _merge_params(self, adapter: str) -> list[nn.Parameter]:
        """The base weight and S's parameters: what a merge reads and writes (gathered under ZeRO-3)."""
        return [self.get_base_layer().weight, *self.surm_matrix[adapter].parameters()]


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks (its own or global ones: observers, activation capture)."""
    own = module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks
    shared = (
        nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks,
        nn.modules.module._global_backward_hooks, nn.modules.module._global_backward_pre_hooks,
    )  # fmt: skip
    return any(map(len, (*own, *shared)))


class Linear(nn.Module, SurmLayer):
    """SURM-LoRA around ``nn.Linear``, transformers' ``Conv1D`` or a quantized linear layer."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: SurmConfig,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        SurmLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add α·S of the active (or given) adapters to the base weight; ``safe_merge`` checks for NaNs first."""
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.surm_matrix:
                continue
            with gather_params_ctx(self._merge_params(adapter)):
                weight = self.get_base_weight()
                merged = weight.clone() if safe_merge else weight
                merged += self.get_delta_weight(adapter).to(device=weight.device, dtype=weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
                self.set_base_weight(merged)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.surm_matrix:
                with gather_params_ctx(self._merge_params(adapter)):
                    weight = self.get_base_weight()
                    weight -= self.get_delta_weight(adapter).to(device=weight.device, dtype=weight.dtype)
                    self.set_base_weight(weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if not (self.disable_adapters or self.merged) and self._folds_into_weight(x):
            return self._forward_folded(x)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        for adapter in self._active_surm():
            delta = self.surm_matrix[adapter](self.surm_dropout[adapter](x))
            # one pass; where y's dtype differs from S(x)'s (autocast), S(x) is rounded to it before α
            result = torch.add(result, delta.to(result.dtype), alpha=self.scaling[adapter])
        return result

    def _folds_into_weight(self, x: torch.Tensor) -> bool:
        """Whether x (W₀ + Σ αS)ᵀ is cheaper than W₀x plus the structured products.

        Folding costs S once per forward (``dense_flops``, O(mn)) and saves, per row of x, the structured
        product: in inference all of it, S's forward (``forward_flops_per_row``) and adding α·S(x) to the
        output (five passes over a row of y, counted when α·S(x) was a tensor of its own; one ``torch.add``
        makes three now, the count kept as the crossovers measured at 768 wide, with five, lie below the
        model's for every structure but LDR: bench/README.md, change 23), so that the layer folds at 768 × 768 from 118
        (Toeplitz), 211 (circulant), 320 (LDR r = 1) and 425 (Kronecker) rows, at 4096 × 4096 from
        529–1,619 (lowrank 2,905) (the model's; bench/fold_rows.py --mode inference measures the
        crossovers); in training its
        forward and ∂x, as S's parameters still get their gradient from x and ∂y
        (``_parameter_grad_flops``: by the structure's transforms or through the dense ∂S, the
        cheaper), which pays for the FFT structures from about 100–300 rows at 768 × 768, 120–350 at
        768 × 3072, 140–450 at 3072 × 768 (measured: bench/fold_rows.py). Not in
        training with dropout on the adapter's input, nor where W₀ or S is not a whole tensor outside
        its own module's forward: a quantized base (bitsandbytes, torchao), DeepSpeed ZeRO-3
        partitions, accelerate offloading, FSDP shards; nor where the base layer has hooks, which
        ``F.linear`` on the folded weight would skip.
        """
        base = self.get_base_layer()
        if type(base) is not nn.Linear or self.quantization_backend is not None or _has_hooks(base):
            return False
        if hasattr(base, "_hf_hook") or hasattr(base.weight, "ds_id"):
            return False
        adapters = self._active_surm()
        if not adapters or not all(self._is_whole(self.surm_matrix[a]) for a in adapters):
            return False
        rows, matrices = x.numel() // x.shape[-1], [self.surm_matrix[a] for a in adapters]
        if torch.is_grad_enabled():
            no_dropout = not self.training or all(isinstance(self.surm_dropout[a], nn.Identity) for a in adapters)
            structured = rows * sum(m.step_flops_per_row for m in matrices)
            folded = sum(m.dense_flops + self._parameter_grad_flops(m, rows) for m in matrices)
            return no_dropout and structured > folded
        add_to_output = 5 * DENSE_PASS_FLOPS * self.out_features
        structured = rows * sum(m.forward_flops_per_row + add_to_output for m in matrices)
        return not self.training and structured > sum(m.dense_flops for m in matrices)

    @staticmethod
    def _is_whole(matrix: nn.Module) -> bool:
        """Not wrapped by FSDP (its parameters are gathered only in its own forward), nor DTensor-sharded."""
        return isinstance(matrix, StructuredMatrix) and not any(isinstance(p, DTensor) for p in matrix.parameters())

    def _active_surm(self) -> list[str]:
        """The active adapters that this layer holds a structured matrix for."""
        return [adapter for adapter in self.active_adapters if adapter in self.surm_matrix]

    def _gradient_route(self, matrix: StructuredMatrix, rows: int) -> str:
        """How a folded S gets its parameter gradient from ``rows`` rows of x: "none" (it does not train),
        "dense" (through the folded weight, ``grads_through_dense``) or "transforms" (its own). Dense only
        where the weight has S's dtype: a bf16/fp16 weight's ∂S = ∂yᵀx is rounded to half precision,
        where the transforms give S's gradient in float32."""
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in matrix.parameters()):
            return "none"
        same_dtype = self.get_base_layer().weight.dtype == matrix._dtype
        return "dense" if same_dtype and matrix.grads_through_dense(rows) else "transforms"

    def _parameter_grad_flops(self, matrix: StructuredMatrix, rows: int) -> float:
        route = self._gradient_route(matrix, rows)
        if route == "none":
            return 0.0
        return matrix.dense_grad_flops(rows) if route == "dense" else rows * matrix.parameter_grad_flops_per_row

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """x(W₀ + Σ αS)ᵀ + b. A trained S gets its gradient the dense way, through the folded weight, where
        that is cheaper (``_gradient_route``), else it is detached here and ``WithParameterGrads`` gives it
        the gradient by its own transforms."""
        base, rows = self.get_base_layer(), x.numel() // x.shape[-1]
        weight, by_transforms = base.weight, []
        for adapter in self._active_surm():
            route = self._gradient_route(self.surm_matrix[adapter], rows)
            with torch.set_grad_enabled(route == "dense"):
                dense = self._dense_structure(adapter).to(weight.dtype)
            # one pass, no α·S in between; on a bf16/fp16 weight S is rounded before α, about an ulp from merge()
            weight = torch.add(weight, dense, alpha=self.scaling[adapter], out=self._sum_buffer(weight, dense))
            if route == "transforms":
                by_transforms.append(adapter)
        result = nn.functional.linear(x, weight, base.bias)
        for adapter in by_transforms:
            matrix = self.surm_matrix[adapter]
            result = WithParameterGrads.apply(result, x, matrix, self.scaling[adapter], *matrix.parameters())
        return result

    @staticmethod
    def _sum_buffer(weight: torch.Tensor, dense: torch.Tensor) -> torch.Tensor | None:
        """S's dense tensor (new, ours, all of its storage) to write W₀ + αS into, saving an m × n allocation whose
        fresh pages cost more than the add at 4096 × 4096 on CPU (bench/README.md, change 23); None (a new
        tensor) where either takes a gradient (autograd takes no ``out=``), and while compiling, whose graphs
        plan their own buffers."""
        if weight.requires_grad or dense.requires_grad or torch.compiler.is_compiling():
            return None
        return dense

    def __repr__(self) -> str:
        return "surm." + super().__repr__()

    def extra_repr(self) -> str:
        return quantization_extra_repr(self)
