"""The substitution-cipher generator and the rank study end to end (tiny preset, a few steps)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, LlamaConfig, LlamaForCausalLM

from llama_synthetic import rank_study
from llama_synthetic.data import IGNORE_INDEX, make_split, make_task


def test_task_is_a_deterministic_random_cipher():
    task = make_task(num_symbols=40, num_pairs=6, seed=3, vocab_size=100, first_token_id=7, bos_token_id=1)
    assert task == make_task(40, 6, seed=3, vocab_size=100, first_token_id=7, bos_token_id=1)
    assert task.permutation != make_task(40, 6, seed=4, vocab_size=100, first_token_id=7).permutation
    assert len(set(task.symbols)) == 40 and all(7 <= s < 100 for s in task.symbols)
    assert sorted(task.permutation) == list(range(40))  # a bijection
    assert sum(i == p for i, p in enumerate(task.permutation)) < 5  # random, not the identity
    assert task.sequence_length == 13
    with pytest.raises(ValueError, match="num_symbols"):
        make_task(num_symbols=94, num_pairs=6, seed=0, vocab_size=100, first_token_id=7)


def test_split_labels_are_the_cipher_of_the_inputs():
    task = make_task(num_symbols=16, num_pairs=5, seed=0, vocab_size=40, first_token_id=3, bos_token_id=1)
    split = make_split(task, num_examples=300, seed=11)
    again = make_split(task, num_examples=300, seed=11)
    assert all(torch.equal(split[k], again[k]) for k in split)
    assert not torch.equal(split["input_ids"], make_split(task, 300, seed=12)["input_ids"])

    cipher = {task.symbols[i]: task.symbols[p] for i, p in enumerate(task.permutation)}
    ids, labels = split["input_ids"].tolist(), split["labels"].tolist()
    assert len(ids[0]) == task.sequence_length
    for row, row_labels in zip(ids, labels, strict=True):
        assert row[0] == 1 and row_labels[0] == IGNORE_INDEX
        plain, ciphered = row[1::2], row[2::2]
        assert ciphered == [cipher[x] for x in plain]
        assert row_labels[1::2] == [IGNORE_INDEX] * task.num_pairs
        assert row_labels[2::2] == ciphered
    assert set(split["input_ids"][:, 1::2].flatten().tolist()) == set(task.symbols)  # every symbol is seen


def test_exact_match_scores_the_shifted_predictions():
    x = IGNORE_INDEX
    labels = np.array([[x, x, 5, x, 6], [x, x, 7, x, 8]])
    # position t predicts token t + 1; positions before unlabelled tokens may hold anything
    predicted = np.array([[9, 5, 0, 6, 0], [9, 7, 0, 3, 0]])
    metrics = rank_study.exact_match(EvalPrediction(predictions=predicted, label_ids=labels))
    assert metrics == {"exact_match": 0.5, "token_accuracy": 0.75}


def test_parse_surm():
    assert rank_study.parse_surm("ldr:2") == rank_study.Run("surm", "ldr", 2)
    assert rank_study.parse_surm("toeplitz").name == "surm_toeplitz"
    with pytest.raises(ValueError, match="rank applies to the ldr and lowrank structures, not to 'circulant'"):
        rank_study.parse_surm("circulant:2")
    with pytest.raises(ValueError, match="unknown structure"):
        rank_study.parse_surm("butterfly")


def tiny_budget(method: str, rank: int | None) -> int:
    """Trainable parameters of the tiny preset, from the layer shapes: 4 attention h×h, gate/up h→m, down m→h."""
    h, m, layers = (rank_study.TINY_LLAMA[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    if method == "lora":
        return layers * rank * (4 * 2 * h + 3 * (h + m))
    return layers * (4 * h + 3 * max(h, m))  # circulant: N = max(in, out) per layer


def test_tiny_preset_smallest_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    argv = ["--preset", "tiny", "--output_dir", str(tmp_path), "--lora_ranks", "1", "--surm", "circulant"]
    report = rank_study.main([*argv, "--max_steps", "4"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "rank_study.png").stat().st_size > 0
    runs = {(run["method"], run["structure"], run["rank"]): run for run in saved["runs"]}
    assert set(runs) == {("lora", "lowrank", 1), ("surm", "circulant", None)}
    for (method, _, rank), run in runs.items():
        assert set(run) >= {"method", "structure", "rank", "trainable_params", "final_train_loss", "eval_accuracy"}
        assert run["trainable_params"] == tiny_budget(method, rank)
        assert 0.0 <= run["eval_accuracy"] <= 1.0 and 0.0 <= run["eval_token_accuracy"] <= 1.0
        # four steps from ΔW = 0 on a random base: the loss is still near log(vocab size)
        assert abs(run["final_train_loss"] - math.log(65)) < 0.5
        assert [step for step, _ in run["loss_curve"]] == [4]
    assert (tmp_path / "runs" / "lora_r1.json").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(rank_study, "train_run", no_training)
    assert rank_study.main([*argv, "--max_steps", "4"]) == report
    with pytest.raises(AssertionError, match="trained again"):  # other settings: not reused
        rank_study.main([*argv, "--max_steps", "5"])
    record = tmp_path / "runs" / "lora_r1.json"  # as if made by a launch of two processes: another global batch
    saved_run = json.loads(record.read_text())
    assert saved_run["settings"]["num_processes"] == 1
    record.write_text(json.dumps(saved_run | {"settings": saved_run["settings"] | {"num_processes": 2}}))
    with pytest.raises(AssertionError, match="trained again"):
        rank_study.main([*argv, "--max_steps", "4"])


@pytest.mark.parametrize("quantized", [False, True])
def test_pretrained_preset_code_path(tmp_path, monkeypatch, quantized):
    """The llama2-7b preset (bf16, gradient checkpointing, optional 4-bit) on a small local checkpoint."""
    load_model, loaded = rank_study.load_model, []
    monkeypatch.setattr(rank_study, "load_model", lambda settings: loaded.append(load_model(settings)) or loaded[-1])
    torch.manual_seed(0)
    # Widths that are multiples of the 4-bit block (64): see test_bitsandbytes_quantized_base_trains_saves_and_loads.
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    argv = ["--preset", "llama2-7b", "--model_name_or_path", str(tmp_path / "model"), "--num_symbols", "16"]
    argv += ["--max_steps", "2", "--lora_ranks", "2", "--surm", "--output_dir", str(tmp_path / "out")]
    report = rank_study.main(argv + ["--load_in_4bit"] * quantized)
    (run,) = report["runs"]
    assert report["settings"]["bf16"] and report["settings"]["gradient_checkpointing"]
    assert report["settings"]["load_in_4bit"] == quantized
    assert run["trainable_params"] == 2 * (4 * 2 * 64 + 3 * (64 + 128))
    assert math.isfinite(run["final_train_loss"])
    base = loaded[0].model.layers[0].self_attn.q_proj
    assert type(base).__name__ == ("Linear4bit" if quantized else "Linear")
    assert base.weight.dtype == (torch.uint8 if quantized else torch.bfloat16)
