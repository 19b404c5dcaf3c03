"""Every file in accelerate_configs/ is read as ``accelerate launch`` reads it, and every DeepSpeed JSON is filled
as the Trainer fills it and parsed by DeepSpeed, so a typo cannot ship. No process is launched."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils import dataclasses as accelerate_dataclasses
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from peft import get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from tiny_models import tiny_llama
from torch.distributed.fsdp import ShardingStrategy, StateDictType
from transformers import TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from surm_nlp import SurmConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))
JSONS = sorted((CONFIGS / "deepspeed").glob("*.json"))
LAUNCHES = {  # config: (distributed_type, processes)
    "single_gpu": ("NO", 1),
    "multi_gpu": ("MULTI_GPU", 8),
    "multi_node": ("MULTI_GPU", 16),
    "cpu": ("MULTI_GPU", 2),  # torchrun; the script runs on CPU with --use_cpu or ACCELERATE_USE_CPU=1
    "deepspeed_zero2": ("DEEPSPEED", 8),
    "deepspeed_zero3": ("DEEPSPEED", 8),
    "deepspeed_zero3_offload": ("DEEPSPEED", 8),
    "fsdp": ("FSDP", 8),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def restore_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Launch helpers and TrainingArguments write os.environ; give every test the environment it started with."""
    saved = os.environ.copy()
    monkeypatch.chdir(ROOT)  # config files name each other relative to the repository root, as users launch
    yield
    os.environ.clear()
    os.environ.update(saved)


def launch(name: str) -> tuple[argparse.Namespace, ClusterConfig, dict[str, str]]:
    """What ``accelerate launch --config_file accelerate_configs/<name>.yaml`` resolves: arguments, config, env."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, config, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = [*config.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return args, config, env


def test_every_config_is_documented() -> None:
    assert {path.stem for path in YAMLS} == set(LAUNCHES)
    assert {path.stem for path in JSONS} == {"zero2", "zero3", "zero3_offload"}
    readme = (CONFIGS / "README.md").read_text()
    assert all(path.name in readme for path in YAMLS + JSONS)


@pytest.mark.parametrize("name", LAUNCHES)
def test_yaml_loads_with_known_fields_and_launches(name: str) -> None:
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # raises on an unknown top-level key
    fsdp = [key if key.startswith("fsdp") else f"fsdp_{key}" for key in config.fsdp_config]
    nested = [*config.deepspeed_config, *fsdp]
    launch_options = {action.dest for action in launch_command_parser()._actions}
    assert set(nested) <= launch_options, "accelerate launch would silently ignore these"

    args, config, _ = launch(name)
    assert (config.distributed_type.value, args.num_processes) == LAUNCHES[name]


def test_multi_node_is_two_nodes_of_eight_with_the_edited_fields_marked() -> None:
    args, _, _ = launch("multi_node")
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 0)
    assert args.rdzv_endpoint == "10.0.0.1:29500"
    marked = re.findall(r"^(\w+):.*# EDIT", (CONFIGS / "multi_node.yaml").read_text(), re.MULTILINE)
    assert set(marked) == {"num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port"}


def test_cpu_config_starts_two_processes_through_torchrun() -> None:
    args, _, _ = launch("cpu")
    assert args.multi_gpu and args.nproc_per_node == "2" and args.master_port == "29500"


@pytest.mark.parametrize(
    ("name", "json_name", "stage"),
    [("deepspeed_zero2", "zero2", 2), ("deepspeed_zero3", "zero3", 3), ("deepspeed_zero3_offload", "zero3_offload", 3)],
)
def test_deepspeed_yaml_gives_accelerate_a_valid_plugin(name: str, json_name: str, stage: int) -> None:
    _, config, env = launch(name)
    json_file = Path(config.deepspeed_config["deepspeed_config_file"])
    assert json_file == Path("accelerate_configs", "deepspeed", f"{json_name}.json") and json_file.is_file()
    os.environ.update(env)
    plugin = DeepSpeedPlugin()  # reads the JSON; rejects accelerate fields the JSON owns (mixed_precision, ...)
    assert plugin.zero_stage == stage
    assert plugin.zero3_init_flag == (stage == 3)  # from_pretrained builds the model partitioned under ZeRO-3


@pytest.mark.parametrize("path", JSONS, ids=lambda path: path.stem)
def test_deepspeed_json_is_filled_by_the_trainer_and_parsed_by_deepspeed(path: Path, tmp_path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to=[]
    )
    config = HfTrainerDeepSpeedConfig(json.loads(path.read_text()))
    try:
        config.trainer_config_process(args)
        config.trainer_config_finalize(args, tiny_llama(), num_training_steps=10)
    finally:
        unset_hf_deepspeed_config()
    assert "auto" not in json.dumps(config.config)
    assert config.config["train_micro_batch_size_per_gpu"] == 4  # batch sizes come from the Trainer

    parsed = DeepSpeedConfig(config.config)  # DeepSpeed's parser: an unknown zero_optimization key is an error
    zero = parsed.zero_config
    assert parsed.zero_optimization_stage == int(path.stem[4])
    assert parsed.train_batch_size == 8
    if parsed.zero_optimization_stage == 3:
        assert zero.gather_16bit_weights_on_model_save  # else ZeRO-3 + PEFT saves an empty adapter (peft #2892)
    offload = path.stem.endswith("offload")
    assert (zero.offload_param is not None, zero.offload_optimizer is not None) == (offload, offload)
    if offload:
        assert zero.offload_param.device == zero.offload_optimizer.device == "cpu"


@pytest.mark.parametrize("structure", ["toeplitz", "kronecker"])
def test_fsdp_wraps_each_llama_decoder_layer_with_its_surm_parameters(
    structure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, env = launch("fsdp")
    os.environ.update(env)
    monkeypatch.setattr(accelerate_dataclasses, "is_cuda_available", lambda: True)  # sync_module_states asks
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # for the current GPU
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.use_orig_params  # frozen base weights and trainable SURM parameters share units
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT

    model = get_peft_model(tiny_llama(), SurmConfig(structure=structure, target_modules=TARGETS))
    plugin.set_auto_wrap_policy(model)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {LlamaDecoderLayer}
    policy = fsdp_auto_wrap_policy(model)  # what the Trainer uses for PEFT models, from the same environment
    units = [name for name, module in model.named_modules() if policy(module=module, recurse=False, nonwrapped_numel=0)]
    layers = [name for name, module in model.named_modules() if isinstance(module, LlamaDecoderLayer)]
    assert set(layers) <= set(units) and len(layers) == 2
    surm = [name for name, _ in model.named_parameters() if "surm_" in name]
    assert surm and all(any(name.startswith(f"{layer}.") for layer in layers) for name in surm)
