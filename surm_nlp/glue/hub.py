"""The model card of a GLUE run, and the upload of its adapter to the Hugging Face Hub."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from huggingface_hub import HfApi

from .methods import Method

NOT_UPLOADED = ["checkpoint-*/**", "runs/**", "training_args.bin"]


def model_card(base_model: str, task: str, method: Method, counts: dict[str, int], metrics: dict[str, float]) -> str:
    """A README.md stating the base model, the method and its config, the parameter counts and the scores.

    The metadata names ``base_model`` only when it is a Hub id, not a local folder.
    """
    config = asdict(method)
    rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items()) if key.startswith("eval_"))
    options = "\n".join(f"| `{key}` | `{value}` |" for key, value in sorted(config.items()) if value is not None)
    hub_id = "" if Path(base_model).exists() else f"base_model: {base_model}\n"  # the Hub rejects local paths there
    return f"""---
library_name: {method.library}
{hub_id}tags: [surm, structured-matrices, glue, {task}]
---
# {method.name} on GLUE {task.upper()}

Fine-tuned from `{base_model}` with **{method.name}** (surm-nlp; Structured Unrestricted-Rank
Matrices, Sehanobish et al., NeurIPS 2024, arXiv:2406.17740).

| parameters | count |
|---|---:|
| trained outside the task head (`adapter_params`) | {counts["adapter_params"]:,} |
| trained in total, head included (`trainable_params`) | {counts["trainable_params"]:,} |

| metric | value |
|---|---:|
{rows}

Configuration:

| field | value |
|---|---|
{options}
"""


def push_to_hub(output_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create ``repo_id`` if needed and upload the run's files: adapter or model, card, results (no checkpoints)."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=NOT_UPLOADED,
        commit_message="surm-nlp GLUE run",
    )
    return str(commit)
