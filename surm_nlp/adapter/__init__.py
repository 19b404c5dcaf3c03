"""SURM-Adapters for AdapterHub's ``adapters``: ``model.add_adapter(name, config=SurmAdapterConfig(...))``.

Importing this package teaches ``adapters`` to build and to load SURM adapters (see :mod:`.plugin`).
"""

from .config import SurmAdapterConfig
from .modeling import StructuredAffine, SurmAdapter
from .plugin import install

__all__ = ["StructuredAffine", "SurmAdapter", "SurmAdapterConfig"]

install()
