"""SURM-LoRA as a PEFT method: ``get_peft_model(model, SurmConfig(structure="toeplitz", ...))``.

Importing this package registers the ``SURM`` PEFT type, so ``PeftModel.from_pretrained`` can load
saved SURM adapters after ``import surm_nlp``.
"""

from peft.utils import register_peft_method

from .config import SurmConfig
from .layer import Linear, SurmLayer
from .model import SurmModel

__all__ = ["Linear", "SurmConfig", "SurmLayer", "SurmModel"]

register_peft_method(name="surm", config_cls=SurmConfig, model_cls=SurmModel)
