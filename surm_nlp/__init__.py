"""surm-nlp: parameter-efficient fine-tuning with Structured Unrestricted-Rank Matrices (SURM).

Sehanobish et al., "Structured Unrestricted-Rank Matrices for Parameter Efficient
Fine-tuning", NeurIPS 2024 (arXiv:2406.17740).
"""

from .adapter import SurmAdapterConfig
from .lora import SurmConfig, SurmModel
from .structures import STRUCTURES, StructuredMatrix, make_structure

__version__ = "0.1.0"

__all__ = [
    "STRUCTURES",
    "StructuredMatrix",
    "SurmAdapterConfig",
    "SurmConfig",
    "SurmModel",
    "__version__",
    "make_structure",
]
