"""The fine-tuning methods of the GLUE runner: SURM-LoRA, SURM-adapters and the baselines, on one model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import adapters
from adapters import CompacterConfig, DoubleSeqBnConfig, SeqBnConfig
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..adapter import SurmAdapterConfig
from ..lora import SurmConfig
from ..structures import STRUCTURES, rank_options

SURM_CHOICES = ("none", *STRUCTURES)
SURM_MODES = ("lora", "adapter")
BASELINES = ("full", "lora", "houlsby", "pfeiffer", "compacter", "bitfit")
ADAPTER_BASELINES = {"houlsby": DoubleSeqBnConfig, "pfeiffer": SeqBnConfig, "compacter": CompacterConfig}
METHOD_FILE = "method.json"  # the Method of a run, beside its saved adapter
ADAPTER_CONFIG = "adapter_config.json"  # of a PEFT adapter and of an `adapters` adapter alike


@dataclass(frozen=True)
class Method:
    """What trains: ``surm`` (a structure or ``none``) in ``surm_mode``, or a ``baseline`` when ``surm`` is none."""

    surm: str = "none"
    surm_mode: str = "lora"
    baseline: str | None = None
    rank: int | None = None
    alpha: float = 1.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.surm not in SURM_CHOICES:
            raise ValueError(f"--surm {self.surm!r} is not a structure: choose one of {', '.join(SURM_CHOICES)}")
        if self.surm_mode not in SURM_MODES:
            raise ValueError(f"--surm_mode {self.surm_mode!r}: choose lora or adapter")
        if self.surm == "none" and self.baseline not in BASELINES:
            raise ValueError(f"--surm none needs --baseline, one of {', '.join(BASELINES)} (got {self.baseline!r})")
        if self.surm != "none" and self.baseline is not None:
            raise ValueError(f"--baseline {self.baseline} runs without SURM: pass --surm none, or drop --baseline")
        if self.surm != "none":
            rank_options(self.surm, self.rank)  # raises on a --surm_rank the structure does not take
        if self.targets and not self.adapts_linear_layers:
            raise ValueError(f"--surm_targets applies to SURM-LoRA and LoRA, not to {self.name}: drop it")
        if self.dropout and self.baseline in ("full", "bitfit"):
            raise ValueError(f"--surm_dropout applies to SURM, LoRA and the adapters, not to {self.name}: drop it")

    def save(self, folder: str | Path) -> None:
        """Write the method to ``folder``/method.json, where :func:`saved_method` reads it back."""
        (Path(folder) / METHOD_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @property
    def name(self) -> str:
        """A short label: ``surm-lora-toeplitz``, ``surm-adapter-circulant``, ``lora``, ``houlsby``..."""
        return self.baseline if self.surm == "none" else f"surm-{self.surm_mode}-{self.surm}"

    @property
    def adapts_linear_layers(self) -> bool:
        """SURM-LoRA or LoRA: an update of the target linear layers (``targets``)."""
        return (self.surm != "none" and self.surm_mode == "lora") or self.baseline == "lora"

    @property
    def uses_adapters_library(self) -> bool:
        return (self.surm != "none" and self.surm_mode == "adapter") or self.baseline in ADAPTER_BASELINES

    @property
    def library(self) -> str:
        """The library whose format the trained weights are saved in (the model card's ``library_name``)."""
        if self.uses_adapters_library:
            return "adapter-transformers"
        return "peft" if self.surm != "none" or self.baseline == "lora" else "transformers"


def saved_method(folder: str | Path) -> Method | None:
    """The Method that a run saved in ``folder`` (:meth:`Method.save`), or in the run folder of the checkpoint
    ``folder``; None if there is none."""
    folder = Path(folder)
    candidates = [folder / METHOD_FILE]
    if folder.name.startswith(PREFIX_CHECKPOINT_DIR):
        candidates.append(folder.parent / METHOD_FILE)
    path = next((path for path in candidates if path.is_file()), None)
    if path is None:
        return None
    try:
        fields = json.loads(path.read_text())
        return Method(**fields | {"targets": tuple(fields["targets"]) if fields.get("targets") else None})
    except (TypeError, ValueError) as error:  # unknown or missing fields, invalid JSON or values
        raise ValueError(f"{path} is not a method saved by run_glue.py ({error}): remove it, pass the flags") from None


def saved_adapter_files(folder: str | Path) -> list[Path]:
    """What a run saved as its adapter in ``folder``: PEFT's files, ``adapters``' folders (one per adapter), and the
    method; not the checkpoints."""
    folder = Path(folder)
    peft_files = [folder / name for name in (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin")]
    adapter_folders = [
        config.parent
        for config in sorted(folder.glob(f"*/{ADAPTER_CONFIG}"))
        if not config.parent.name.startswith(PREFIX_CHECKPOINT_DIR)
    ]
    return [path for path in (*peft_files, folder / METHOD_FILE) if path.is_file()] + adapter_folders


def head_modules(model: PreTrainedModel) -> list[str]:
    """Top-level modules with weights outside the encoder (``classifier``, ``score``...): the task head."""
    return [
        name
        for name, module in model.named_children()
        if name != model.base_model_prefix and any(True for _ in module.parameters())
    ]


def apply_method(model: PreTrainedModel, method: Method, adapter_name: str) -> nn.Module:
    """Freeze ``model`` and add what ``method`` trains; the task head always trains."""
    heads = head_modules(model)
    targets = list(method.targets) if method.targets else None
    if targets:
        check_targets(model, targets)
    if method.surm != "none" and method.surm_mode == "lora":
        config = SurmConfig(
            structure=method.surm, rank=method.rank, alpha=method.alpha, dropout=method.dropout,
            target_modules=targets, modules_to_save=heads,
        )  # fmt: skip
        return get_peft_model(model, config)
    if method.baseline == "lora":
        config = LoraConfig(
            r=method.lora_r, lora_alpha=method.lora_alpha, lora_dropout=method.dropout,
            target_modules=targets, modules_to_save=heads,
        )  # fmt: skip
        return get_peft_model(model, config)
    if method.uses_adapters_library:
        if method.surm != "none":
            config = SurmAdapterConfig(structure=method.surm, rank=method.rank, dropout=method.dropout)
        else:
            config = ADAPTER_BASELINES[method.baseline](dropout=method.dropout)
        adapters.init(model)
        model.add_adapter(adapter_name, config=config)
        model.train_adapter(adapter_name)  # freezes the encoder; the head stays trainable
        return model
    for name, param in model.named_parameters():  # full / bitfit
        param.requires_grad = method.baseline == "full" or name.endswith(".bias") or name.split(".")[0] in heads
    return model


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise a ValueError naming the model's linear layers when a target (a module name suffix) matches none."""
    names = [name for name, _ in model.named_modules()]
    missing = [target for target in targets if not any(n == target or n.endswith(f".{target}") for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"--surm_targets {','.join(missing)}: no such module in {type(model).__name__}; "
            f"its linear layers are {', '.join(linear)}"
        )


def load_trained(model: PreTrainedModel, path: str | Path) -> nn.Module:
    """``model`` with the PEFT adapter or the ``adapters`` adapter saved at ``path`` (as the runner saves them).

    The adapter and the task head are trainable, as after ``apply_method``: evaluate it or train it further.
    """
    path = Path(path)
    config_file = path / ADAPTER_CONFIG
    is_peft = config_file.is_file() and "peft_type" in json.loads(config_file.read_text())
    saved = [file for file in saved_adapter_files(path) if file.is_dir()]  # `adapters` saves a folder per adapter
    if not is_peft and config_file.is_file():
        saved = [path]
    if (is_peft and saved) or len(saved) > 1:
        found = ["a PEFT adapter"] * is_peft + [f"an adapter in {folder.name}/" for folder in saved]
        raise ValueError(f"{path} holds {' and '.join(found)}, from several runs: pass the folder of one run")
    if is_peft:
        return PeftModel.from_pretrained(model, path, is_trainable=True)
    if not saved:
        raise FileNotFoundError(f"{path} holds no PEFT adapter ({ADAPTER_CONFIG}) and no saved `adapters` adapter")
    (folder,) = saved
    trained_on = json.loads((folder / ADAPTER_CONFIG).read_text())
    if trained_on.get("hidden_size") not in (None, model.config.hidden_size):
        raise ValueError(
            f"the adapter in {folder} was trained on {trained_on.get('model_name')} (hidden size "
            f"{trained_on['hidden_size']}), this base model has hidden size {model.config.hidden_size}: "
            "load it into the model it was trained on"
        )
    adapters.init(model)
    model.train_adapter(model.load_adapter(str(folder)))  # freezes the encoder; the head stays trainable
    return model


def parameter_counts(model: nn.Module, heads: list[str]) -> dict[str, int]:
    """``trainable_params`` (everything that trains) and ``adapter_params`` (what trains outside the task head)."""
    trainable = adapter = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trainable += param.numel()
        if name.removeprefix("base_model.model.").split(".")[0] not in heads:
            adapter += param.numel()
    return {"trainable_params": trainable, "adapter_params": adapter}
