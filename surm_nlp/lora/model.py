"""SurmModel: injects SURM-LoRA layers into any Hugging Face model through ``target_modules``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
)
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.quantization_utils import get_quantization_kwargs, resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import SurmConfig
from .layer import Linear, SurmLayer


class SurmModel(BaseTuner):
    """Creates a SURM-LoRA model from a pretrained transformers model (use ``peft.get_peft_model``).

    Targets ``nn.Linear``, transformers' ``Conv1D`` (GPT-2, with ``fan_in_fan_out``) and quantized
    linear layers (bitsandbytes 8-bit / 4-bit). Without ``target_modules`` the query/value
    projections of known architectures are adapted, as for LoRA.
    """

    prefix: str = "surm_"
    tuner_layer_cls = SurmLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        surm_config: SurmConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, Linear):
            target.update_layer(adapter_name, surm_config)
            return
        new_module = self._create_new_module(surm_config, adapter_name, target, **get_quantization_kwargs(self))
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        """BaseTuner's version, except for modules without a ``weight`` (RoBERTa's classification head
        in ``merge_and_unload``), onto which it would copy ``child.weight`` and crash."""
        if hasattr(new_module, "base_layer") or hasattr(getattr(child, "base_layer", child), "weight"):
            super()._replace_module(parent, child_name, new_module, child)
        else:
            setattr(parent, child_name, new_module)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: PeftConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """peft's selection of the adapter's entries, with FSDP's ``_fsdp_wrapped_module.`` dropped from module names.

        With one FSDP unit per decoder layer that segment sits inside module names but not in FSDP's full state
        dict, so peft 0.21 would select nothing and ``save_pretrained`` would write an empty adapter.
        """
        prefixes = {prefix.replace("_fsdp_wrapped_module.", "") for prefix in _get_tuner_state_dict_key_prefixes(model)}
        selected = _filter_state_dict_by_key_prefixes(state_dict, prefixes)
        selected.update(cls._get_learnable_bias_state_dict(model, state_dict, config))
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """peft's key remapping, then a check that every SURM tensor fits its layer in this base model. A checkpoint
        saved before the layers' shapes were (``surm_shape``) gets this model's, so that peft does not warn of it."""
        state_dict = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        for name, module in model.named_modules():
            if isinstance(module, SurmLayer) and adapter_name in module.surm_matrix:
                _check_checkpoint_shapes(name, module, adapter_name, config, state_dict)
                state_dict.setdefault(f"{name}.surm_shape.{adapter_name}", module.surm_shape[adapter_name])
        return state_dict

    @staticmethod
    def _create_new_module(surm_config: SurmConfig, adapter_name: str, target: nn.Module, **kwargs: Any) -> Linear:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, Conv1D):
            if not surm_config.fan_in_fan_out:
                warnings.warn("The target module is Conv1D; setting fan_in_fan_out to True.", stacklevel=2)
                surm_config.fan_in_fan_out = True
            kwargs["is_target_conv_1d_layer"] = True
        elif isinstance(base, nn.Linear) or getattr(resolve_quantization_backend(base), "layer_type", None) == "linear":
            if surm_config.fan_in_fan_out:
                warnings.warn("The target module is a Linear; setting fan_in_fan_out to False.", stacklevel=2)
                surm_config.fan_in_fan_out = False
        else:
            raise TypeError(
                f"Target module {target} is not supported by SURM: use torch.nn.Linear (optionally quantized "
                "by bitsandbytes) or transformers' Conv1D layers in target_modules."
            )
        return Linear(target, adapter_name, config=surm_config, **kwargs)


def _check_checkpoint_shapes(
    name: str, layer: SurmLayer, adapter_name: str, config: PeftConfig, state_dict: dict[str, torch.Tensor]
) -> None:
    """Raise a ValueError naming the layer and both shapes when a saved adapter does not fit ``layer``: its
    recorded (in, out) differs (``surm_shape``), or, in a checkpoint without it, a saved S's parameter shape."""
    here = f"layer {name.removeprefix('base_model.model.')!r} is {layer.in_features}→{layer.out_features} (in→out) here"
    base_name = config.base_model_name_or_path or "not named"
    advice = (
        f"The adapter was trained on a base model with other layer shapes ({base_name} in adapter_config.json); "
        "load it into that model."
    )
    saved_shape = state_dict.get(f"{name}.surm_shape.{adapter_name}")
    if saved_shape is not None and tuple(saved_shape.tolist()) != (layer.in_features, layer.out_features):
        saved_in, saved_out = saved_shape.tolist()
        raise ValueError(
            f"SURM adapter {adapter_name!r} does not fit this base model: {here}, but the checkpoint's S was trained "
            f"on a {saved_in}→{saved_out} layer. {advice}"
        )
    for param_name, param in layer.surm_matrix[adapter_name].named_parameters():
        saved = state_dict.get(f"{name}.surm_matrix.{adapter_name}.{param_name}")
        if saved is not None and saved.shape != param.shape:
            raise ValueError(
                f"SURM adapter {adapter_name!r} does not fit this base model: {here}, so its {config.structure} "
                f"`{param_name}` must have shape {tuple(param.shape)}, but the checkpoint has {tuple(saved.shape)}. "
                f"{advice}"
            )
