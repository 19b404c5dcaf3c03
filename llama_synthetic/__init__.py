"""Synthetic-task rank studies: LoRA at increasing ranks vs SURM (``python -m llama_synthetic.rank_study``)."""
