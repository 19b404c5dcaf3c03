"""A synthetic substitution-cipher task whose solution needs a high-rank weight update.

A fixed random permutation π of K symbol tokens s₀ … s_{K−1} is the cipher. Each example is
``[bos] x₁ π(x₁) x₂ π(x₂) … x_L π(x_L)`` with the xᵢ drawn uniformly from the K symbols; the model
is trained (causal LM loss on the π(xᵢ) tokens only) to emit π(xᵢ) right after reading xᵢ.

Why it needs rank: the prediction at xᵢ must turn the embedding of xᵢ into the output direction
of π(xᵢ), so in the basis of the K symbols the update realises the K × K permutation matrix P.
P is orthogonal: all K singular values are 1, so the best rank-r approximation keeps only r / K
of ‖P‖²_F (Eckart–Young) and a rank-r update, r ≪ K, cannot tell most symbols apart. The
pre-trained network offers no shortcut: π is random, so no pre-training text encodes it. K sets
the rank needed; L only sets how many symbols one sequence checks (exact match needs all L).

Splits are deterministic: the same ``seed`` gives the same cipher and the same token tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label value ignored by the loss (Hugging Face convention)


@dataclass(frozen=True)
class SubstitutionTask:
    """The cipher: symbol token ids and π as indices, π(symbols[i]) = symbols[permutation[i]]."""

    symbols: tuple[int, ...]
    permutation: tuple[int, ...]
    num_pairs: int
    bos_token_id: int | None = None

    @property
    def num_symbols(self) -> int:
        return len(self.symbols)

    @property
    def sequence_length(self) -> int:
        return 2 * self.num_pairs + (self.bos_token_id is not None)


def make_task(
    num_symbols: int,
    num_pairs: int,
    seed: int,
    vocab_size: int,
    first_token_id: int = 0,
    bos_token_id: int | None = None,
) -> SubstitutionTask:
    """K = ``num_symbols`` distinct token ids drawn from [first_token_id, vocab_size), and a random π.

    ``first_token_id`` skips special tokens (and, for Llama-2, its 256 byte tokens: use 259).
    """
    available = vocab_size - first_token_id
    if not 2 <= num_symbols <= available:
        raise ValueError(f"num_symbols must be in [2, {available}], got {num_symbols}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be ≥ 1, got {num_pairs}")
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.randperm(available, generator=generator)[:num_symbols] + first_token_id
    permutation = torch.randperm(num_symbols, generator=generator)
    return SubstitutionTask(tuple(symbols.tolist()), tuple(permutation.tolist()), num_pairs, bos_token_id)


def make_split(task: SubstitutionTask, num_examples: int, seed: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``labels`` (num_examples, sequence_length); labels keep only the π(xᵢ) tokens."""
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.tensor(task.symbols)
    plain = torch.randint(task.num_symbols, (num_examples, task.num_pairs), generator=generator)
    ciphered = torch.tensor(task.permutation)[plain]
    pairs = torch.stack([symbols[plain], symbols[ciphered]], dim=-1).flatten(1)  # x₁ π(x₁) x₂ π(x₂) …
    labels = pairs.clone()
    labels[:, 0::2] = IGNORE_INDEX
    if task.bos_token_id is not None:
        bos = torch.full((num_examples, 1), task.bos_token_id)
        pairs = torch.cat([bos, pairs], dim=1)
        labels = torch.cat([torch.full_like(bos, IGNORE_INDEX), labels], dim=1)
    return {"input_ids": pairs, "labels": labels}


class TokenDataset(torch.utils.data.Dataset):
    """Rows of a :func:`make_split` dict as the per-example dicts ``transformers.Trainer`` expects."""

    def __init__(self, split: dict[str, torch.Tensor]) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.split.items()}
