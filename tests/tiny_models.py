"""Tiny randomly initialised Hugging Face models (no downloads) for fast tests."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

ENCODER = {  # hidden 32, FFN 48 (rectangular intermediate/output dense), 2 labels
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "num_labels": 2,
}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """BERT of ``ENCODER`` shape."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**ENCODER)).eval()


def tiny_roberta(seed: int = 0) -> RobertaForSequenceClassification:
    """RoBERTa with hidden 32, FFN 48, and its weight-less ``RobertaClassificationHead``."""
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(RobertaConfig(**ENCODER, max_position_embeddings=64)).eval()


def tiny_llama(seed: int = 0, hidden_size: int = 32, intermediate_size: int = 40) -> LlamaForCausalLM:
    """Llama with grouped-query attention: k_proj/v_proj are hidden → hidden/2 (32 → 16), MLP 32 ↔ 40."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2 whose projections are transformers' Conv1D (weight stored as (in, out))."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def token_ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(seed))
