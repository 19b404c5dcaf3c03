"""SURM adapters in AdapterHub's ``adapters`` on tiny BERT, RoBERTa and Llama models."""

from __future__ import annotations

import json
import subprocess
import sys

import adapters
import pytest
import torch
from adapters import BertAdapterModel, CompacterConfig, DoubleSeqBnConfig, SeqBnConfig
from adapters.methods.modeling import Adapter
from tiny_models import ENCODER, tiny_bert, tiny_llama, tiny_roberta, token_ids
from transformers import BertConfig

from surm_nlp import STRUCTURES, SurmAdapterConfig
from surm_nlp.adapter import SurmAdapter

RANKED = {"ldr": 2, "lowrank": 4}
MODELS = {"bert": tiny_bert, "roberta": tiny_roberta, "llama": tiny_llama}


def surm_adapter_config(structure: str, **kwargs) -> SurmAdapterConfig:
    return SurmAdapterConfig(structure=structure, rank=RANKED.get(structure), **kwargs)


def with_adapter(build, structure: str, name: str = "task", **kwargs) -> torch.nn.Module:
    model = build()
    adapters.init(model)
    model.add_adapter(name, config=surm_adapter_config(structure, **kwargs))
    model.train_adapter(name)
    return model.eval()  # train_adapter switches to train mode; compare without dropout


def labels_for(build, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"labels": ids} if build is tiny_llama else {"labels": torch.tensor([0, 1, 1, 0])}


def surm_modules(model: torch.nn.Module) -> list[SurmAdapter]:
    return [m for m in model.modules() if isinstance(m, SurmAdapter)]


def perturb(model: torch.nn.Module) -> None:
    """Move every adapter away from its identity start, as training would."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapters." in name or "_adapters." in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name", MODELS)
def test_identity_at_init_only_adapters_train_and_loss_decreases(structure, name):
    build = MODELS[name]
    ids = token_ids(batch=4, length=8)
    expected = logits(build(), ids)
    model = with_adapter(build, structure)
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-3)
    layers = model.config.num_hidden_layers
    assert len(surm_modules(model)) == 2 * layers  # after attention and after the feed-forward block
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # plain HF classes keep their task head trainable; everything in the base model is frozen
    assert all(".adapters.task." in n or n.startswith(("classifier.", "lm_head.")) for n in trainable), trainable
    assert any(".adapters.task." in n for n in trainable)

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(ids, **labels_for(build, ids)).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_adapter_block_is_residual_plus_activation_of_structured_affine(structure):
    model = with_adapter(tiny_bert, structure, scaling=0.5)
    perturb(model)
    block = surm_modules(model)[0]
    x, residual = torch.randn(3, 5, ENCODER["hidden_size"]), torch.randn(3, 5, ENCODER["hidden_size"])
    dense = block.projection.matrix.to_dense()
    want = residual + 0.5 * torch.nn.functional.silu(x @ dense.T + block.projection.bias)
    torch.testing.assert_close(block(x, residual)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_save_and_load_adapter_in_process(structure, tmp_path):
    model = with_adapter(tiny_roberta, structure)
    perturb(model)
    ids = token_ids()
    expected = logits(model, ids)
    model.save_adapter(str(tmp_path), "task")
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["config"]
    assert (
        saved["architecture"] == "surm" and saved["structure"] == structure and saved["rank"] == RANKED.get(structure)
    )

    fresh = tiny_roberta()
    adapters.init(fresh)
    name = fresh.load_adapter(str(tmp_path))
    fresh.set_active_adapters(name)
    assert isinstance(fresh.adapters_config.match(name, SurmAdapterConfig), SurmAdapterConfig)
    assert len(surm_modules(fresh)) == 4 and not any(type(m) is Adapter for m in fresh.modules())
    torch.testing.assert_close(logits(fresh.eval(), ids), expected, rtol=0, atol=0)


def test_save_then_load_in_a_fresh_process_reproduces_outputs(tmp_path):
    model = with_adapter(tiny_llama, "toeplitz")
    perturb(model)
    ids = token_ids()
    model.save_adapter(str(tmp_path / "adapter"), "task")
    torch.save({"ids": ids, "logits": logits(model, ids)}, tmp_path / "expected.pt")
    script = f"""
import sys; sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
import adapters, torch, surm_nlp
from tiny_models import tiny_llama
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = tiny_llama()
adapters.init(model)
model.set_active_adapters(model.load_adapter({str(tmp_path / "adapter")!r}))
with torch.no_grad():
    torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], rtol=0, atol=0)
print("REPRODUCED")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "REPRODUCED" in result.stdout, result.stderr[-3000:]


def test_loading_without_importing_surm_nlp_fails_loudly(tmp_path):
    with_adapter(tiny_bert, "circulant").save_adapter(str(tmp_path), "task")
    script = f"""
import adapters, sys
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from tiny_models import tiny_bert
model = tiny_bert()
adapters.init(model)
model.load_adapter({str(tmp_path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "KeyError: 'surm'" in result.stderr


def test_adapter_parameter_counts_for_bert_base_width():
    model = BertAdapterModel(BertConfig(num_hidden_layers=2))  # hidden 768, like bert-base
    d, locations = 768, 2 * 2
    per_location = {  # documented formula: P(S) + d (bias)
        "circulant": d + d,
        "toeplitz": (2 * d - 1) + d,
        "symmetric_toeplitz": d + d,
        "kronecker": (24 * 24 + 32 * 32) + d,
        "ldr": 2 * 1 * d + d,
        "lowrank": 2 * 8 * d + d,
    }
    houlsby = locations * (2 * d * (d // 16) + d // 16 + d)
    for structure, count in per_location.items():
        model.add_adapter(structure, config=SurmAdapterConfig(structure=structure))
        counted = sum(p.numel() for n, p in model.named_parameters() if f".adapters.{structure}." in n)
        assert counted == locations * count, structure
        if structure != "lowrank":
            assert counted <= houlsby / 10, structure
    model.add_adapter("houlsby", config=DoubleSeqBnConfig())
    assert sum(p.numel() for n, p in model.named_parameters() if ".adapters.houlsby." in n) == houlsby


def test_several_adapters_activation_deletion_and_baselines_side_by_side():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("surm", config=SurmAdapterConfig(structure="toeplitz"))
    model.add_adapter("pfeiffer_surm", config=SurmAdapterConfig(mh_adapter=False, original_ln_before=True))
    model.add_adapter("houlsby", config=DoubleSeqBnConfig())
    model.add_adapter("pfeiffer", config=SeqBnConfig())
    model.add_adapter("compacter", config=CompacterConfig(reduction_factor=8))  # hidden 32 → 4, a multiple of phm_dim
    layers = model.bert.encoder.layer
    assert isinstance(layers[0].attention.output.adapters["surm"], SurmAdapter)
    assert "pfeiffer_surm" not in layers[0].attention.output.adapters  # Pfeiffer placement: after the FFN only
    assert isinstance(layers[0].output.adapters["pfeiffer_surm"], SurmAdapter)
    assert type(layers[0].output.adapters["houlsby"]) is Adapter  # baselines are built by adapters as before

    ids = token_ids()
    base = logits(model.eval(), ids)
    perturb(model)
    model.set_active_adapters("surm")
    surm_out = logits(model, ids)
    model.set_active_adapters("houlsby")
    assert not torch.allclose(logits(model, ids), surm_out)
    model.set_active_adapters(None)
    torch.testing.assert_close(logits(model, ids), base)
    model.delete_adapter("surm")
    assert "surm" not in layers[0].output.adapters and "surm" not in model.adapters_config


def test_bf16_model_trains_without_adapter_to():
    model = tiny_roberta().to(torch.bfloat16)
    adapters.init(model)
    model.add_adapter("task", config=SurmAdapterConfig(structure="circulant"))
    model.train_adapter("task")
    ids = token_ids(batch=4)
    out = model(ids, labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16
    block = surm_modules(model)[0]
    assert block.projection.bias.dtype == torch.float32  # adapter weights stay float32, as PEFT keeps them
    assert block.projection.matrix.weight.grad.abs().sum() > 0 and torch.isfinite(block.projection.bias.grad).all()


def test_classification_head_and_push_to_hub_with_a_stubbed_hub(tmp_path):
    model = BertAdapterModel(BertConfig(**{k: v for k, v in ENCODER.items() if k != "num_labels"}))
    model.add_adapter("sst2", config=SurmAdapterConfig(structure="toeplitz"))
    model.add_classification_head("sst2", num_labels=2)
    model.train_adapter("sst2")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bert", "heads"}
    assert all(".adapters.sst2." in n for n, p in model.named_parameters() if p.requires_grad and n.startswith("bert"))

    uploaded: dict[str, bytes] = {}

    def upload(work_dir, repo_id, files_timestamps, **kwargs):
        for path in __import__("pathlib").Path(work_dir).iterdir():
            uploaded[path.name] = path.read_bytes()
        return f"https://huggingface.co/{repo_id}"

    model._create_repo = lambda repo_id, **kwargs: repo_id
    model._upload_modified_files = upload
    assert model.push_adapter_to_hub("user/surm-sst2", "sst2") == "https://huggingface.co/user/surm-sst2"
    model.save_adapter(str(tmp_path), "sst2")
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(saved) <= set(uploaded) and "README.md" in uploaded
    assert json.loads(uploaded["adapter_config.json"])["config"]["architecture"] == "surm"
    assert uploaded["pytorch_adapter.bin"] == saved["pytorch_adapter.bin"]


def test_bad_configurations():
    with pytest.raises(ValueError, match="choose one of circulant"):
        SurmAdapterConfig(structure="butterfly")
    with pytest.raises(ValueError, match="rank applies to the ldr and lowrank"):
        SurmAdapterConfig(structure="toeplitz", rank=2)
    with pytest.raises(ValueError, match=r"f'\(0\) = 0.*Use 'swish', 'gelu' or 'tanh'"):
        SurmAdapterConfig(non_linearity="relu")
    with pytest.raises(ValueError, match="reduction_factor=1"):
        SurmAdapterConfig(reduction_factor=16)
    with pytest.raises(ValueError, match="is_parallel=False"):
        SurmAdapterConfig(is_parallel=True)
