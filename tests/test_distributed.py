"""SURM-LoRA on a tiny Llama trained by 2 CPU processes (gloo) under DeepSpeed ZeRO-2 / ZeRO-3 and FSDP.

DeepSpeed: ``accelerate launch --config_file accelerate_configs/deepspeed_zero{2,3}.yaml`` runs
``tests/distributed/train_tiny_llama.py``, which trains a few steps through the Trainer and saves the adapter.
FSDP (GPU-only in accelerate): ``torchrun`` runs ``tests/distributed/fsdp_tiny_llama.py`` with fsdp.yaml's setup.
Each saved adapter is reloaded here on one process and must give the distributed model's outputs. About 15 s
per launch on 2 cores, once DeepSpeed has built its shared-memory op (cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM

from surm_nlp import SurmConfig

pytestmark = pytest.mark.distributed
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
SCRIPTS = Path(__file__).parent / "distributed"
ADAPTED_LAYERS = 14  # 2 decoder layers × 7 projections


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str]) -> None:
    """Run ``command`` from the repository root, offline, with no GPU and tests/ importable."""
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **offline, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]


def launch(tmp_path: Path, config: str, *script_args: str, deepspeed_config: Path | None = None) -> dict:
    """Train on 2 processes with accelerate and ``config``; returns what the script recorded (``gathered.pt``)."""
    tiny_llama().save_pretrained(tmp_path / "base")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    command += ["--num_processes", "2", "--main_process_port", str(free_port())]
    if deepspeed_config is not None:
        command += ["--deepspeed_config_file", str(deepspeed_config)]
    script = [str(SCRIPTS / "train_tiny_llama.py"), "--base", str(tmp_path / "base")]
    run([*command, *script, "--output_dir", str(tmp_path / "adapter"), *script_args])
    return torch.load(tmp_path / "adapter" / "gathered.pt")


def check_saved_adapter(adapter: Path, dtype: torch.dtype) -> None:
    """adapter_model.safetensors holds every SURM tensor, full-sized, as a single-process model has them."""
    config = SurmConfig.from_pretrained(adapter)
    config.base_model_name_or_path = None
    fresh = get_peft_model(tiny_llama(), config)
    expected = {key: value.shape for key, value in get_peft_model_state_dict(fresh).items()}
    saved = load_file(adapter / "adapter_model.safetensors")
    assert {key: value.shape for key, value in saved.items()} == expected
    matrices = {key: value for key, value in saved.items() if ".surm_matrix." in key}
    assert len({key.split(".surm_matrix")[0] for key in matrices}) == ADAPTED_LAYERS
    assert all(value.dtype == dtype for value in matrices.values())
    shapes = {key.removesuffix(".surm_shape"): value.tolist() for key, value in saved.items() if "surm_shape" in key}
    modules = dict(fresh.named_modules())
    assert {name: [modules[name].in_features, modules[name].out_features] for name in shapes} == shapes
    assert len(shapes) == ADAPTED_LAYERS


def logits(base: Path, dtype: torch.dtype, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(ids).logits.float()


@needs_deepspeed
def test_zero3_partitions_surm_saves_the_gathered_adapter_and_it_reloads(tmp_path: Path) -> None:
    config = json.loads((CONFIGS / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny SURM vectors
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    run = launch(tmp_path, "deepspeed_zero3.yaml", "--structure", "toeplitz", deepspeed_config=tmp_path / "zero3.json")

    assert run["world_size"] == 2 and len(run["losses"]) == 4
    assert run["surm_partitioned"] and run["surm_local_numel"] < run["surm_numel"]
    assert run["zero_init_adapter"] == {"partitioned": True, "starts_at_zero": True}
    check_saved_adapter(tmp_path / "adapter", torch.float32)
    reloaded = logits(tmp_path / "base", torch.float32, run["ids"], tmp_path / "adapter")
    torch.testing.assert_close(reloaded, run["logits"])
    torch.testing.assert_close(run["merged_logits"], run["logits"])  # merge gathers the partitioned weights
    base = logits(tmp_path / "base", torch.float32, run["ids"])
    assert (base - run["logits"]).abs().max() > 1e-2  # the adapter was trained, not left at ΔW = 0


@needs_deepspeed
def test_zero2_bf16_runs_the_fft_in_float32_and_the_adapter_reloads(tmp_path: Path) -> None:
    run = launch(tmp_path, "deepspeed_zero2.yaml", "--structure", "ldr", "--bf16")

    assert run["world_size"] == 2 and len(run["losses"]) == 4
    assert run["surm_dtypes"] == ["torch.bfloat16"]  # DeepSpeed casts the whole model, S included
    assert run["fft_dtypes"] and set(run["fft_dtypes"]) <= {"torch.float32", "torch.complex64"}
    check_saved_adapter(tmp_path / "adapter", torch.bfloat16)
    reloaded = logits(tmp_path / "base", torch.bfloat16, run["ids"], tmp_path / "adapter")
    torch.testing.assert_close(reloaded, run["logits"])
    torch.testing.assert_close(run["merged_logits"], run["logits"], atol=2e-2, rtol=0)  # merged in bf16
    base = logits(tmp_path / "base", torch.bfloat16, run["ids"])
    assert (base - run["logits"]).abs().max() > 1e-2


def test_fsdp_step_matches_unsharded_training_and_saves_the_full_adapter(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(SCRIPTS / "fsdp_tiny_llama.py"), "--output_dir", str(tmp_path)]
    run(command)
    result = torch.load(tmp_path / "fsdp.pt")

    assert result["units"] == 1 + 2 + ADAPTED_LAYERS  # root, 2 decoder layers, each Toeplitz S (a trainable leaf)
    torch.testing.assert_close(result["logits"], result["reference_logits"])
    check_saved_adapter(tmp_path, torch.float32)
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(result["ids"]).logits, result["reference_logits"])
