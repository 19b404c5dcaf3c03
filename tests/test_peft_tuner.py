"""SURM-LoRA as a PEFT method on tiny BERT, Llama (grouped-query) and GPT-2 (Conv1D) models."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType
from tiny_models import ENCODER, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta, token_ids

from surm_nlp import STRUCTURES, SurmConfig, SurmModel, make_structure
from surm_nlp.lora import Linear, SurmLayer

BERT_TARGETS = ["query", "value", "intermediate.dense"]  # 32×32, 32×32 and rectangular 32 → 48
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANKED = {"ldr": 2, "lowrank": 4}


def surm_config(structure: str, **kwargs) -> SurmConfig:
    return SurmConfig(structure=structure, rank=RANKED.get(structure), **kwargs)


def surm_layers(model: torch.nn.Module) -> dict[str, SurmLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, SurmLayer)}


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_registered_with_peft():
    assert PeftType("SURM") is PeftType.SURM and PeftType.SURM == "SURM"
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SURM"] is SurmConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["SURM"] is SurmModel
    assert SurmConfig().peft_type == "SURM"


@pytest.mark.parametrize("structure", STRUCTURES)
def test_zero_init_trainable_parameters_and_gradients(structure):
    base, ids = tiny_roberta(), token_ids()
    expected_logits = logits(base, ids)
    model = get_peft_model(base, surm_config(structure, target_modules=BERT_TARGETS, modules_to_save=["classifier"]))
    torch.testing.assert_close(logits(model, ids), expected_logits, rtol=0, atol=0)  # ΔW = 0

    layers = surm_layers(model)
    assert len(layers) == 3 * 2
    per_layer = {
        shape: make_structure(structure, *shape, **({"rank": RANKED[structure]} if structure in RANKED else {}))
        for shape in [(32, 32), (32, 48)]
    }
    expected = 2 * (2 * per_layer[(32, 32)].num_parameters + per_layer[(32, 48)].num_parameters)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    surm = {n: p for n, p in trainable.items() if ".surm_matrix.default." in n}
    assert sum(p.numel() for p in surm.values()) == expected
    others = set(trainable) - set(surm)
    assert others and all(n.startswith("base_model.model.classifier.modules_to_save.default.") for n in others)

    model.train()
    model(ids, labels=torch.tensor([0, 1])).loss.backward()
    for layer in layers.values():  # every structured update gets a learning signal at ΔW = 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.surm_matrix["default"].parameters())
        assert layer.get_base_layer().weight.grad is None


@pytest.mark.parametrize("structure", STRUCTURES)
def test_merge_unmerge_and_unload(structure):
    base, ids = tiny_roberta(), token_ids()
    base_logits = logits(base, ids)
    original = base.roberta.encoder.layer[0].intermediate.dense.weight.detach().clone()
    config = surm_config(
        structure, target_modules=BERT_TARGETS, init_weights=False, alpha=0.5, modules_to_save=["classifier"]
    )
    model = get_peft_model(base, config)
    adapted = logits(model, ids)
    assert (adapted - base_logits).abs().max() > 1e-4

    layer = model.base_model.model.roberta.encoder.layer[0].intermediate.dense
    model.merge_adapter()
    torch.testing.assert_close(
        layer.get_base_layer().weight, original + 0.5 * layer.surm_matrix["default"].to_dense().detach()
    )
    torch.testing.assert_close(logits(model, ids), adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight, original, rtol=0, atol=1e-6)

    merged = model.merge_and_unload()
    assert not surm_layers(merged) and not any("surm_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), adapted, rtol=1e-5, atol=1e-5)


def two_adapter_layer(structure: str, dropout: float = 0.0) -> tuple[torch.nn.Module, SurmLayer]:
    """The 32 → 48 layer of a float64 tiny RoBERTa with ``structure`` and a circulant adapter, both active."""
    config = surm_config(
        structure, target_modules=["intermediate.dense"], init_weights=False, alpha=0.7, dropout=dropout
    )
    model = get_peft_model(tiny_roberta().double(), config)
    model.add_adapter("second", surm_config("circulant", target_modules=["intermediate.dense"], init_weights=False))
    model.base_model.set_adapter(["default", "second"])
    return model, model.base_model.model.roberta.encoder.layer[0].intermediate.dense


def structured_forward(layer: SurmLayer, x: torch.Tensor) -> torch.Tensor:
    """W₀x + b + Σ α·S(x) with each structure's own product: the reference for the folded forward."""
    return layer.base_layer(x) + sum(layer.scaling[a] * layer.surm_matrix[a](x) for a in layer.active_adapters)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_inference_folds_the_update_into_the_weight_with_the_same_result(structure):
    """The no-grad eval forward (x (W₀ + Σ αS)ᵀ) against the structured products, float64, 32 → 48."""
    model, layer = two_adapter_layer(structure)
    model.eval()
    x = torch.randn(4, 10, 32, dtype=torch.float64)
    before = [p.clone() for p in layer.parameters()]
    with torch.no_grad():
        assert layer._folds_into_weight(x)
        for _ in range(2):  # the fold writes into S's dense tensor, never into W₀ or the parameters
            torch.testing.assert_close(layer(x), structured_forward(layer, x), rtol=1e-12, atol=1e-12)
        assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
        assert not layer._folds_into_weight(x[:1, :1])  # one row: the structured product is cheaper
        model.train()
        assert not layer._folds_into_weight(x)  # training mode without gradients: no reason to fold


def test_no_folding_where_the_base_layer_has_hooks_or_a_quantized_weight(monkeypatch):
    """The folded forward calls F.linear, not the base layer: its hooks (own or global) would not run."""
    model, layer = two_adapter_layer("circulant")
    model.eval()
    x = torch.randn(4, 10, 32, dtype=torch.float64)
    seen = []
    handle = layer.base_layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        assert not layer._folds_into_weight(x)
        torch.testing.assert_close(layer(x), structured_forward(layer, x), rtol=1e-12, atol=1e-12)
    assert seen == [(4, 10, 48)] * 2  # in the layer and in the reference
    handle.remove()
    assert layer._folds_into_weight(x)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, inputs: None)
    try:
        assert not layer._folds_into_weight(x)
    finally:
        handle.remove()
    monkeypatch.setattr(layer, "quantization_backend", object())  # torchao keeps nn.Linear, swaps the weight's type
    assert not layer._folds_into_weight(x)


@pytest.mark.parametrize(
    ("shape", "structure", "structured_rows", "folded_rows"),
    [
        ((768, 768), "circulant", 64, 1024),
        ((768, 768), "ldr", 128, 1024),
        ((1024, 4096), "ldr", 256, 1024),
        ((4096, 4096), "circulant", 512, 2048),
    ],
)
def test_inference_folds_where_that_measured_cheaper(shape, structure, structured_rows, folded_rows):
    """Un-merged inference keeps the structured product where folding measured slower (bench/fold_rows.py --mode
    inference: LDR at 768 × 768 1.50–1.59× the structured time at 128 rows in two runs, at 1024 × 4096 1.53× at 256
    rows; circulant at 4096 × 4096 1.51–1.57× at 512 rows) and folds where it measured faster (0.66–0.93×)."""
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(*shape)), SurmConfig(structure=structure, target_modules=["0"])
    )
    layer = model.eval().base_model.model[0]
    with torch.no_grad():
        assert not layer._folds_into_weight(torch.zeros(structured_rows, shape[0], device="meta"))
        assert layer._folds_into_weight(torch.zeros(folded_rows, shape[0], device="meta"))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_inference_folds_a_batch_of_sequences_and_not_a_decoding_step(structure):
    """RoBERTa-base's 8 × 128 rows fold for every structure (where each measured 0.54–0.87× the structured time,
    the premise of the model-level inference tables); 16 rows, a decoding step's batch, fold for none (by design of
    the cost model: folded Toeplitz measured 0.76× and 0.94× the structured time there, inside the runs' noise)."""
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(768, 768)), SurmConfig(structure=structure, target_modules=["0"])
    )
    layer = model.eval().base_model.model[0]
    with torch.no_grad():
        assert layer._folds_into_weight(torch.zeros(8, 128, 768, device="meta"))
        assert not layer._folds_into_weight(torch.zeros(16, 768, device="meta"))


@pytest.mark.parametrize("route", ["transforms", "dense"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_training_forward_and_gradients_equal_the_structured_product(structure, route, monkeypatch):
    """Whichever way the layer trains (folded, S's gradient by its transforms or through the dense ∂S;
    or structured), output and gradients are the structured ones."""
    model, layer = two_adapter_layer(structure)
    model.train()
    x = torch.randn(3, 16, 32, dtype=torch.float64, requires_grad=True)  # 48 rows: folding may pay at this width
    upstream = torch.randn(3, 16, 48, dtype=torch.float64)
    # With the circulant adapter every pair folds (its saved transforms pay for both dense S, Kronecker's and
    # low rank's parameter gradients then come from autograd); alone, Kronecker and low rank train structured.
    for adapters, folds in ((["default", "second"], True), (["default"], structure not in ("kronecker", "lowrank"))):
        model.base_model.set_adapter(adapters)
        assert layer._folds_into_weight(x) == folds
        monkeypatch.setattr(layer, "_folds_into_weight", lambda _, folds=folds: folds)
        monkeypatch.setattr(layer, "_gradient_route", lambda matrix, rows: route)  # every S, when folded
        trained = [x, *(p for p in layer.surm_matrix.parameters() if p.requires_grad)]
        results = []
        for forward in (layer, lambda x: structured_forward(layer, x)):
            output = forward(x)
            results.append((output, torch.autograd.grad((output * upstream).sum(), trained)))
        monkeypatch.undo()
        (got, got_grads), (want, want_grads) = results
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ["transforms", "dense"])
def test_folded_training_of_a_trainable_base_weight_gives_its_gradient(route, monkeypatch):
    """W₀ trained along with S (unfrozen by the user): folded, ∂W₀ = ∂yᵀx and S's gradient as structured."""
    model, layer = two_adapter_layer("toeplitz")
    model.train()
    layer.base_layer.weight.requires_grad_(True)
    x = torch.randn(3, 16, 32, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 16, 48, dtype=torch.float64)
    assert layer._folds_into_weight(x)
    monkeypatch.setattr(layer, "_folds_into_weight", lambda _: True)
    monkeypatch.setattr(layer, "_gradient_route", lambda matrix, rows: route)
    trained = [x, layer.base_layer.weight, *layer.surm_matrix.parameters()]
    got = torch.autograd.grad((layer(x) * upstream).sum(), trained)
    want = torch.autograd.grad((structured_forward(layer, x) * upstream).sum(), trained)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 48), (48, 32)])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_the_fold_writes_into_s_dense_tensor_where_neither_takes_a_gradient(structure, shape):
    """W₀ + αS goes into S's dense tensor, a new one that is all of its storage (so the sum, saved for ∂x in
    training, keeps nothing larger alive), unless W₀ or S takes a gradient."""
    weight = torch.randn(shape[1], shape[0])
    with torch.no_grad():
        dense = make_structure(structure, *shape).to_dense()
    assert dense.untyped_storage().nbytes() == dense.numel() * dense.element_size()
    assert Linear._sum_buffer(weight, dense) is dense
    assert Linear._sum_buffer(weight.requires_grad_(), dense) is None


def test_folded_training_output_takes_in_place_ops_and_parameters_must_not_change_before_backward():
    """What follows a folded layer may modify its output in place (ReLU(inplace=True)); parameters changed
    in place between forward and backward are an error, not a silently wrong gradient."""
    model, layer = two_adapter_layer("ldr")
    model.train()
    x = torch.randn(3, 8, 32, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 8, 48, dtype=torch.float64)
    assert layer._folds_into_weight(x)
    trained = [x, *layer.surm_matrix.parameters()]
    got = torch.autograd.grad((torch.relu_(layer(x)) * upstream).sum(), trained)
    want = torch.autograd.grad((torch.relu(structured_forward(layer, x)) * upstream).sum(), trained)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    output = layer(x)
    with torch.no_grad():
        layer.surm_matrix["default"].weight_h.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (output * upstream).sum().backward()


def test_training_folds_where_the_saved_transforms_outweigh_materialising_s():
    """At RoBERTa-base width (768 × 768) the FFT structures train folded from 92 (Toeplitz), 214
    (circulant), 322 (LDR r=1) rows on; Kronecker and low rank, whose products are matmuls, never."""
    first_folded = {}
    for structure in STRUCTURES:
        rank = 1 if structure in RANKED else None
        config = SurmConfig(structure=structure, rank=rank, target_modules=["0"])
        layer = get_peft_model(torch.nn.Sequential(torch.nn.Linear(768, 768)), config).base_model.model[0]
        inputs = (torch.empty(rows, 768, device="meta") for rows in range(1, 4097))  # the rule reads shapes only
        first_folded[structure] = next((x.shape[0] for x in inputs if layer._folds_into_weight(x)), None)
    assert first_folded == {
        "circulant": 214,
        "toeplitz": 92,
        "symmetric_toeplitz": 92,
        "kronecker": None,
        "ldr": 322,
        "lowrank": None,
    }
    _, layer = two_adapter_layer("toeplitz", dropout=0.1)
    x = torch.randn(4096, 32)
    layer.eval()
    assert layer._folds_into_weight(x)  # rows enough to fold, and dropout is off in eval
    layer.train()
    assert not layer._folds_into_weight(x)  # dropout on the adapter input: structured


def test_folded_training_takes_the_dense_gradient_where_the_transforms_cost_more():
    """At 768 × 768 and a batch of 1,024 rows, LDR's gradient transforms (2 + 4r a row) outgrow the dense
    ∂S = ∂yᵀx from displacement rank 2 on (measured: bench/fold_rows.py); the circulant family's never do."""
    rows = 1024
    x = torch.empty(rows, 768, device="meta")
    for structure, rank, through_dense in [
        ("circulant", None, False),
        ("toeplitz", None, False),
        ("symmetric_toeplitz", None, False),
        ("ldr", 1, False),
        ("ldr", 2, True),
        ("ldr", 4, True),
    ]:
        config = SurmConfig(structure=structure, rank=rank, target_modules=["0"])
        layer = get_peft_model(torch.nn.Sequential(torch.nn.Linear(768, 768)), config).base_model.model[0]
        layer.train()
        assert layer._folds_into_weight(x), structure
        route = layer._gradient_route(layer.surm_matrix["default"], rows)
        assert route == ("dense" if through_dense else "transforms"), (structure, rank)
    ldr = make_structure("ldr", 768, 768, rank=4)
    assert next(rows for rows in range(1, 4097) if ldr.grads_through_dense(rows)) == 281
    # a bf16 weight would round ∂S = ∂yᵀx to bf16: S keeps its float32 gradient by transforms there
    layer.to(torch.bfloat16).surm_matrix.float()
    assert layer._gradient_route(layer.surm_matrix["default"], rows) == "transforms"
    layer.surm_matrix["default"].requires_grad_(False)
    assert layer._gradient_route(layer.surm_matrix["default"], rows) == "none"  # frozen: no gradient to pay for


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_folded_training_on_a_half_precision_weight_keeps_a_float32_gradient(dtype):
    """At 256 wide and 2,048 rows the dense ∂S would pay, but a bf16/fp16 weight would round ∂S = ∂yᵀx to
    half precision (about 1e-3 relative error): S's gradient comes by its transforms instead, as exact as
    float32, against a float64 reference from the same half-precision inputs."""
    torch.manual_seed(0)
    config = SurmConfig(structure="ldr", rank=2, target_modules=["0"], init_weights=False)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(256, 256)).to(dtype), config)
    layer, matrix = model.base_model.model[0], model.base_model.model[0].surm_matrix["default"]
    model.train()
    x, upstream = torch.randn(8, 256, 256).to(dtype), torch.randn(8, 256, 256).to(dtype)
    assert matrix._dtype == torch.float32 and matrix.grads_through_dense(2048) and layer._folds_into_weight(x)
    got = torch.autograd.grad((layer(x).float() * upstream.float()).sum(), list(matrix.parameters()))
    reference = copy.deepcopy(matrix).double()
    want = torch.autograd.grad(
        (reference(x.double()) * upstream.double()).sum() * layer.scaling["default"], list(reference.parameters())
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and (g.double() - w).norm() / w.norm() < 1e-5


@pytest.mark.parametrize("structure", ["toeplitz", "kronecker", "lowrank"])
def test_save_and_load_in_process(structure, tmp_path):
    ids = token_ids()
    config = surm_config(structure, target_modules=BERT_TARGETS, init_weights=False, modules_to_save=["classifier"])
    model = get_peft_model(tiny_roberta(), config)
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].out_proj.weight.mul_(3.0)  # trained head
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SURM" and saved["structure"] == structure
    assert (tmp_path / "adapter_model.safetensors").exists()

    for low_cpu_mem_usage in (False, True):  # True: adapter weights created on meta, filled by the load
        loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        assert isinstance(loaded.peft_config["default"], SurmConfig)
        torch.testing.assert_close(logits(loaded, ids), expected)


def test_load_in_a_new_process(tmp_path):
    ids = token_ids()
    model = get_peft_model(tiny_roberta(), surm_config("ldr", target_modules=BERT_TARGETS, init_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    torch.save({"ids": ids, "logits": logits(model, ids)}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
import surm_nlp  # registers SURM with peft
from peft import PeftModel
from tiny_models import tiny_roberta
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = PeftModel.from_pretrained(tiny_roberta(), {str(tmp_path / "adapter")!r})
with torch.no_grad():
    torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"])
print("LOADED_OK")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "LOADED_OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("structure", ["circulant", "toeplitz", "ldr", "kronecker"])
def test_llama_all_projections_including_grouped_query(structure):
    base, ids = tiny_llama(), token_ids()
    model = get_peft_model(base, surm_config(structure, target_modules=LLAMA_TARGETS, init_weights=False))
    layers = surm_layers(model)
    assert len(layers) == 7 * 2
    k_proj = layers["base_model.model.model.layers.0.self_attn.k_proj"]
    assert (k_proj.in_features, k_proj.out_features) == (32, 16)
    adapted = logits(model, ids)
    torch.testing.assert_close(logits(model.merge_and_unload(), ids), adapted, rtol=1e-4, atol=1e-4)


def test_default_target_modules():
    model = get_peft_model(tiny_llama(), SurmConfig(structure="toeplitz"))
    assert {name.rsplit(".", 1)[-1] for name in surm_layers(model)} == {"q_proj", "v_proj"}
    model = get_peft_model(tiny_bert(), SurmConfig(structure="circulant"))
    assert {name.rsplit(".", 1)[-1] for name in surm_layers(model)} == {"query", "value"}


def test_gpt2_conv1d_uses_fan_in_fan_out():
    base, ids = tiny_gpt2(), token_ids()
    with pytest.warns(UserWarning, match="fan_in_fan_out to True"):
        model = get_peft_model(base, SurmConfig(structure="toeplitz", target_modules=["c_attn"], init_weights=False))
    layer = surm_layers(model)["base_model.model.transformer.h.0.attn.c_attn"]
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (32, 96)
    assert layer.get_delta_weight("default").shape == layer.get_base_layer().weight.shape == (32, 96)
    adapted = logits(model, ids)
    torch.testing.assert_close(logits(model.merge_and_unload(), ids), adapted, rtol=1e-4, atol=1e-4)


def test_several_adapters():
    base, ids = tiny_roberta(), token_ids()
    base_logits = logits(base, ids)
    model = get_peft_model(base, surm_config("circulant", target_modules=BERT_TARGETS, init_weights=False))
    first = logits(model, ids)
    model.add_adapter("second", surm_config("toeplitz", target_modules=BERT_TARGETS, init_weights=False))
    assert logits(model, ids).equal(first)  # adding does not activate
    model.set_adapter("second")
    second = logits(model, ids)
    assert (second - first).abs().max() > 1e-4
    assert all(p.requires_grad == (".second." in n) for n, p in model.named_parameters() if "surm_" in n)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids), base_logits)
    model.delete_adapter("second")
    assert not any(".second." in n for n, _ in model.named_parameters())
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, ids), first)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_bf16_base_model_trains_and_merges(structure):
    base, ids = tiny_llama().to(torch.bfloat16), token_ids()
    model = get_peft_model(base, surm_config(structure, target_modules=["q_proj", "k_proj"], init_weights=False))
    layer = surm_layers(model)["base_model.model.model.layers.0.self_attn.k_proj"]
    assert all(p.dtype == torch.float32 for p in layer.surm_matrix.parameters())  # peft upcasts adapters
    model.train()
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.surm_matrix.parameters())
    model.eval()
    adapted = logits(model, ids).float()
    merged = logits(model.merge_and_unload(), ids).float()
    assert (merged - adapted).abs().max() <= 0.05 * adapted.abs().max()


def test_bad_configurations():
    with pytest.raises(ValueError, match="choose one of circulant"):
        SurmConfig(structure="butterfly")
    with pytest.raises(ValueError, match="rank applies to the ldr and lowrank"):
        SurmConfig(structure="circulant", rank=4)
    for rank in (0, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            SurmConfig(structure="ldr", rank=rank, target_modules=["query"])
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(tiny_roberta(), SurmConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="not supported by SURM"):
        get_peft_model(tiny_roberta(), SurmConfig(target_modules=["word_embeddings"]))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_loading_into_a_base_with_other_shapes_names_the_layer(structure, tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    get_peft_model(tiny_roberta(), surm_config(structure, target_modules=["query"])).save_pretrained(tmp_path)
    wider = RobertaForSequenceClassification(
        RobertaConfig(**{**ENCODER, "hidden_size": 48}, max_position_embeddings=64)
    )
    with pytest.raises(ValueError, match=r"layer 'roberta\.encoder\.layer\.0\.attention\.self\.query' is 48→48") as err:
        PeftModel.from_pretrained(wider, tmp_path)
    assert "trained on a 32→32 layer" in str(err.value) and "load it into that model" in str(err.value)
    strip_layer_shapes(tmp_path)  # as saved before the shapes were: S's parameter shapes tell
    with pytest.raises(ValueError, match=r"is 48→48 \(in→out\) here, so its .* but the checkpoint has") as err:
        PeftModel.from_pretrained(wider, tmp_path)
    assert "load it into that model" in str(err.value)


def strip_layer_shapes(adapter: Path) -> None:
    """Remove the layers' (in, out) from a saved adapter, as saved before they were recorded."""
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")
    assert any(key.endswith(".surm_shape") for key in weights)
    save_file(
        {k: v for k, v in weights.items() if not k.endswith(".surm_shape")}, adapter / "adapter_model.safetensors"
    )


@pytest.mark.parametrize("structure", ["circulant", "symmetric_toeplitz", "ldr"])
def test_loading_into_a_base_whose_layer_differs_only_in_its_shorter_side_is_an_error(structure, tmp_path):
    """Circulant, symmetric Toeplitz and LDR have parameters of size max(m, n): an adapter of a 32 → 32 k_proj
    has the parameter shapes of one for 32 → 16 (grouped-query attention); the saved (in, out) tells them apart.
    A checkpoint without that record (as saved before it) falls back to the parameter shapes and loads without a
    warning of the missing record."""
    llama = tiny_llama()
    llama.config.num_key_value_heads = 4  # k_proj 32 → 32
    full_heads = type(llama)(llama.config)
    get_peft_model(full_heads, surm_config(structure, target_modules=["k_proj"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.k_proj' is 32→16 .* trained on a 32→32 layer"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: v.tolist() for k, v in weights.items() if "surm_shape" in k} == {
        f"base_model.model.model.layers.{i}.self_attn.k_proj.surm_shape": [32, 32] for i in range(2)
    }
    strip_layer_shapes(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(type(llama)(llama.config), tmp_path)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]


@pytest.mark.parametrize(
    "quantization",
    [{"load_in_8bit": True}, {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch.float32}],
    ids=["8bit", "4bit"],
)
def test_bitsandbytes_quantized_base_trains_saves_and_loads(quantization, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # Widths that are multiples of bitsandbytes' 4-bit block (64): on CPUs with AVX512-BF16 its eval
    # forward repacks the weight in blocks and fails for narrower layers (bitsandbytes 0.50.2).
    tiny_llama(hidden_size=64, intermediate_size=128).save_pretrained(tmp_path / "base")

    def quantized_base():
        return AutoModelForCausalLM.from_pretrained(
            tmp_path / "base", quantization_config=BitsAndBytesConfig(**quantization), device_map="cpu"
        )

    ids = token_ids()
    config = SurmConfig(structure="toeplitz", target_modules=["q_proj", "v_proj"], init_weights=False)
    model = get_peft_model(quantized_base(), config)
    layer = surm_layers(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    assert layer.quantization_backend is not None
    model.train()
    model(ids, labels=ids).loss.backward()
    assert layer.surm_matrix["default"].weight.grad.abs().sum() > 0
    model.eval()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(logits(PeftModel.from_pretrained(quantized_base(), tmp_path / "adapter"), ids), expected)
    if "load_in_8bit" in quantization:  # merging re-quantizes: equal up to int8 rounding
        merged = logits(model.merge_and_unload(), ids)
        assert (merged - expected).abs().max() <= 0.05 * expected.abs().max()


def test_several_active_adapters_sum():
    model = get_peft_model(tiny_roberta(), surm_config("circulant", target_modules=["query"], init_weights=False))
    model.add_adapter("second", surm_config("ldr", target_modules=["query"], init_weights=False, alpha=0.3))
    model.base_model.set_adapter(["default", "second"])
    layer = model.base_model.model.roberta.encoder.layer[0].attention.self.query
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = layer.get_base_layer()(x) + x @ (layer.get_delta_weight("default") + layer.get_delta_weight("second")).T
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("build", [tiny_roberta, tiny_llama, tiny_gpt2], ids=["roberta", "llama", "gpt2"])
def test_a_few_optimizer_steps_lower_the_loss(structure, build):
    targets = {tiny_roberta: BERT_TARGETS, tiny_llama: LLAMA_TARGETS, tiny_gpt2: ["c_attn", "c_fc"]}[build]
    torch.manual_seed(0)
    model = get_peft_model(build(), surm_config(structure, target_modules=targets))
    ids = token_ids(batch=4, length=8)
    labels = {"labels": torch.tensor([0, 1, 1, 0])} if build is tiny_roberta else {"labels": ids}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []  # the model stays in eval mode: no dropout noise in the comparison
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(ids, **labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_trainable_parameter_counts_for_roberta_base_shapes():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    base = RobertaForSequenceClassification(RobertaConfig(num_labels=2))  # roberta-base shapes, random weights
    head = sum(p.numel() for p in base.classifier.parameters())
    per_layer = {  # documented formulas for a 768 × 768 query/value projection, N = 768
        "circulant": 768,
        "toeplitz": 768 + 768 - 1,
        "symmetric_toeplitz": 768,
        "kronecker": 24 * 24 + 32 * 32,
        "ldr": 2 * 1 * 768,
        "lowrank": 8 * (768 + 768),
    }
    for structure, count in per_layer.items():
        config = SurmConfig(structure=structure, target_modules=["query", "value"], modules_to_save=["classifier"])
        model = get_peft_model(base, config)
        trainable, _ = model.get_nb_trainable_parameters()
        assert trainable == 12 * 2 * count + head, structure
        base = model.unload()
