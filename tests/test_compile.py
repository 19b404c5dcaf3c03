"""``torch.compile`` of SURM models: one graph, no graph breaks (``fullgraph=True``, as PEFT's LoRA compiles), with
the eager outputs and gradients, on the structured and the folded path, in training and inference.

Most tests trace with the ``aot_eager`` backend: dynamo and AOTAutograd as inductor gets them (graph breaks, the
traced backward), without inductor's C++ code generation, which one slow test runs."""

from __future__ import annotations

import adapters
import pytest
import torch
from peft import get_peft_model
from test_peft_tuner import BERT_TARGETS, surm_layers
from tiny_models import ENCODER, tiny_bert

from surm_nlp import STRUCTURES, SurmAdapterConfig, SurmConfig

#: (batch, length): 4, 16, 32 and 128 rows of x, so that on the 32- and 48-wide layers of tiny BERT every path
#: runs (``layer_paths``): structured; folded with S's gradient by its transforms (16 rows for Toeplitz, 32 for
#: circulant and LDR r = 1) or through the dense ∂S (128); in inference folded from 32 or 128 rows.
BATCHES = [(1, 4), (1, 16), (2, 16), (4, 32)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles afresh: no graphs, guards or recompile counts from another test's models."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def trainable_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def assert_compiles_as_eager(model: torch.nn.Module, backend: str, batches: list[tuple[int, int]] = BATCHES) -> None:
    """The compiled model's logits, and after a backward the trainable parameters' gradients, equal eager's
    for each (batch, length), with gradients (training) and without (inference); no graph break allowed."""
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    generator = torch.Generator().manual_seed(0)
    for batch, length in batches:
        ids = torch.randint(0, ENCODER["vocab_size"], (batch, length), generator=generator)
        model(input_ids=ids).logits.square().sum().backward()
        expected = trainable_grads(model)
        compiled(input_ids=ids).logits.square().sum().backward()
        torch.testing.assert_close(trainable_grads(model), expected)
        with torch.no_grad():
            torch.testing.assert_close(compiled(input_ids=ids).logits, model(input_ids=ids).logits)


def surm_lora_bert(structure: str) -> torch.nn.Module:
    """Tiny BERT with a random S (not the zero start) on ``BERT_TARGETS``, in eval mode (no dropout, so compiled
    and eager see the same network; gradients still flow); LDR of displacement rank 1, the benchmarks' one."""
    rank = {"ldr": 1, "lowrank": 4}.get(structure)
    config = SurmConfig(structure=structure, rank=rank, target_modules=BERT_TARGETS, init_weights=False)
    return get_peft_model(tiny_bert(), config).eval()


def layer_paths(model: torch.nn.Module) -> set[str]:
    """The paths that the model's SURM layers take over ``BATCHES``: in training "structured", "transforms"
    (folded, S's gradient by its transforms) or "dense" (folded, through the dense ∂S); in inference
    "inference structured" or "inference folded"."""
    paths = set()
    for batch, length in BATCHES:
        for layer in surm_layers(model).values():
            x, matrix = torch.empty(batch * length, layer.in_features), layer.surm_matrix["default"]
            folds = layer._folds_into_weight(x)
            paths.add(layer._gradient_route(matrix, x.shape[0]) if folds else "structured")
            with torch.no_grad():
                paths.add("inference folded" if layer._folds_into_weight(x) else "inference structured")
    return paths


@pytest.mark.parametrize("structure", STRUCTURES)
def test_surm_lora_compiles_whole_with_eager_outputs_and_gradients(structure):
    model = surm_lora_bert(structure)
    folds_in_training = structure not in ("kronecker", "lowrank")  # their products cost less than a dense S
    trained = {"structured", "transforms", "dense"} if folds_in_training else {"structured"}
    assert layer_paths(model) == trained | {"inference structured", "inference folded"}
    assert_compiles_as_eager(model, "aot_eager")


def test_surm_adapter_compiles_whole_with_eager_outputs_and_gradients():
    model = tiny_bert()
    adapters.init(model)
    model.add_adapter("surm", config=SurmAdapterConfig(structure="ldr", rank=1))
    model.train_adapter("surm")
    model.eval()  # no dropout: compiled and eager see the same network
    for parameter in model.parameters():  # leave the zero start, so that the gradients reach every parameter
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    assert_compiles_as_eager(model, "aot_eager", BATCHES[:1])  # an adapter has one path


@pytest.mark.slow
def test_inductor_compiles_ldr_with_eager_outputs_and_gradients():
    """Inductor's generated code (C++ on CPU) for the structure with the most operators: complex FFTs, twists,
    its dense form's in-place diagonal scan (folded in training by transforms and in inference at 32 rows)."""
    assert_compiles_as_eager(surm_lora_bert("ldr"), "inductor", [(1, 4), (2, 16)])
