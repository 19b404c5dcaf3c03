"""The two places where SURM plugs into ``adapters`` 1.3, which has no plug-in API for bottleneck blocks.

1. ``AdapterConfig._get_config_class`` maps a saved config's ``architecture`` to its class from a
   fixed dict; an unknown name would raise KeyError. ``"surm"`` is added, so ``load_adapter`` rebuilds
   a :class:`SurmAdapterConfig` (not a plain ``BnConfig`` that would drop the SURM fields).
2. ``BottleneckLayer.add_adapter`` builds ``Adapter``/``ParallelAdapter`` for every bottleneck config;
   for a SURM config it now builds a :class:`SurmAdapter` instead (everything else is unchanged).

:func:`install` checks that both hooks still look as expected and raises an ImportError naming the
pinned ``adapters`` version if they do not, rather than patching a changed library silently.
"""

from __future__ import annotations

import inspect
from typing import Any

from adapters.configuration.adapter_config import AdapterConfig
from adapters.methods import bottleneck
from adapters.methods.bottleneck import BottleneckLayer

from .config import SurmAdapterConfig
from .modeling import SurmAdapter

_ORIGINAL_GET_CONFIG_CLASS = AdapterConfig._get_config_class
_ORIGINAL_ADD_ADAPTER = BottleneckLayer.add_adapter


def _get_config_class(config_dict: dict[str, Any]) -> type[AdapterConfig]:
    if config_dict.get("architecture") == SurmAdapterConfig.architecture:
        return SurmAdapterConfig
    return _ORIGINAL_GET_CONFIG_CLASS(config_dict)


def _add_adapter(self: BottleneckLayer, adapter_name: str, layer_idx: int) -> bool:
    config = self.adapters_config.match(
        adapter_name, config_type=SurmAdapterConfig, layer_idx=layer_idx, location_key=self.location_key
    )
    if config is None:
        return _ORIGINAL_ADD_ADAPTER(self, adapter_name, layer_idx)
    self.layer_idx = layer_idx
    adapter = SurmAdapter(adapter_name, self.model_config.hidden_size, config)
    if self.is_layer_hooked:  # residual and layer norm are applied by the model, as in the original
        for key, value in bottleneck.LAYER_HOOK_UNSUPPORTED:
            if config.get(key) == value:
                raise ValueError(f"{key}={value} is not supported for models hooked via the adapter interface")
        adapter.original_ln_after = False
    adapter.train(self.training)
    self.adapters[adapter_name] = adapter
    return True


def _check_hooks() -> None:
    expected = {
        "AdapterConfig._get_config_class": (_ORIGINAL_GET_CONFIG_CLASS, ["config_dict"]),
        "BottleneckLayer.add_adapter": (_ORIGINAL_ADD_ADAPTER, ["self", "adapter_name", "layer_idx"]),
    }
    for name, (function, parameters) in expected.items():
        if list(inspect.signature(function).parameters) != parameters:
            raise ImportError(
                f"surm_nlp.adapter patches {name}{parameters}, but the installed `adapters` defines it differently. "
                "Install the version pinned in requirements.txt (adapters==1.3.0)."
            )
    if not hasattr(bottleneck, "LAYER_HOOK_UNSUPPORTED"):
        raise ImportError("adapters.methods.bottleneck.LAYER_HOOK_UNSUPPORTED is gone; install adapters==1.3.0")


def install() -> None:
    """Teach ``adapters`` about SURM adapters (idempotent)."""
    _check_hooks()
    AdapterConfig._get_config_class = staticmethod(_get_config_class)
    BottleneckLayer.add_adapter = _add_adapter
