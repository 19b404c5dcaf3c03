#!/usr/bin/env python
"""Fine-tune a sequence classifier on GLUE with SURM-LoRA, SURM-adapters or a baseline.

The shape of transformers' ``examples/pytorch/text-classification/run_glue.py``: dataclass
arguments parsed by ``HfArgumentParser``, ``Trainer``, GLUE metrics, ``save_metrics``, checkpoint
resume. Launch with ``python`` or ``accelerate launch [--config_file accelerate_configs/...]``::

    accelerate launch glue_scripts/run_glue.py --model_name_or_path roberta-base --task_name rte \\
        --surm toeplitz --surm_mode lora --do_train --do_eval --output_dir out/rte-toeplitz
    python glue_scripts/run_glue.py --model_name_or_path <dir> --task_name sst2 --glue_dir ../shared/data/glue \\
        --surm none --baseline houlsby --do_train --do_eval --output_dir out/sst2-houlsby
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import transformers
from adapters import AdapterTrainer
from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from surm_nlp.glue import (
    BASELINES,
    SURM_CHOICES,
    SURM_MODES,
    GlueTask,
    Method,
    apply_method,
    check_columns,
    encode_labels,
    get_task,
    glue_metric,
    head_modules,
    is_labelled,
    load_files,
    load_glue_dir,
    load_hub,
    load_trained,
    metric_prefix,
    model_card,
    parameter_counts,
    push_to_hub,
    saved_adapter_files,
    saved_method,
)
from surm_nlp.trainer import end_distributed_run

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Hub id (e.g. roberta-base) or local directory of the base model."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (tokenizers) tokenizer."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own code from the Hub (only for repositories you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a saved classifier whose number of labels differs."}
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained adapter (an output_dir of this script) to evaluate or train further, not a new one; "
            "its method is the one saved with it (method.json), so no method flags."
        },
    )


@dataclass
class DataTrainingArguments:
    task_name: str | None = field(
        default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli."}
    )
    glue_dir: str | None = field(
        default=None, metadata={"help": "Local GLUE folder in the official TSV layout (e.g. ../shared/data/glue)."}
    )
    train_file: str | None = field(default=None, metadata={"help": "csv/tsv/json training file with a `label` column."})
    validation_file: str | None = field(default=None, metadata={"help": "csv/tsv/json validation file."})
    test_file: str | None = field(default=None, metadata={"help": "csv/tsv/json file to predict (--do_predict)."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch to max_seq_length (else dynamic)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use the first N shuffled training examples."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N evaluation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use the first N test examples."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the datasets cache."})


@dataclass
class MethodArguments:
    surm: str = field(default="none", metadata={"help": "Structure of the SURM update.", "choices": SURM_CHOICES})
    surm_mode: str = field(default="lora", metadata={"help": "SURM-LoRA or SURM-adapter.", "choices": SURM_MODES})
    surm_rank: int | None = field(default=None, metadata={"help": "Rank of ldr/lowrank."})
    surm_alpha: float = field(default=1.0, metadata={"help": "Scaling α of ΔW = α·S (lora mode)."})
    surm_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the input of the SURM-LoRA/LoRA update; in SURM adapters and the adapter baselines "
            "where `adapters` puts it (on the adapter's output)."
        },
    )
    surm_targets: str | None = field(
        default=None, metadata={"help": "Comma-separated target modules for SURM-LoRA and LoRA (default: query,value)."}
    )
    baseline: str | None = field(default=None, metadata={"help": "With --surm none.", "choices": BASELINES})
    lora_r: int = field(default=8, metadata={"help": "LoRA baseline rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA baseline alpha (scaling alpha/r)."})

    def method(self) -> Method:
        targets = tuple(t.strip() for t in self.surm_targets.split(",")) if self.surm_targets else None
        return Method(
            surm=self.surm, surm_mode=self.surm_mode, baseline=self.baseline, rank=self.surm_rank,
            alpha=self.surm_alpha, dropout=self.surm_dropout, targets=targets, lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
        )  # fmt: skip


class ArgumentParser(HfArgumentParser):
    """Errors in one line naming the fix (argparse would print the usage of every TrainingArguments flag first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def parse_args(
    argv: list[str] | None,
) -> tuple[ArgumentParser, ModelArguments, DataTrainingArguments, TrainingArguments, Method, GlueTask | None]:
    dataclasses = (ModelArguments, DataTrainingArguments, MethodArguments, TrainingArguments)
    parser = ArgumentParser(dataclasses, prog=os.path.basename(__file__))
    try:  # unknown flags and TrainingArguments' own checks raise ValueError
        model_args, data_args, method_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        method = trained_method(model_args.adapter_name_or_path, method_args)
        task = get_task(data_args.task_name) if data_args.task_name is not None else None
        if task is not None:
            data_args.task_name = task.name  # as the Hub, evaluate and the file names spell it (STS-B → stsb)
        if data_args.glue_dir and (data_args.train_file or data_args.validation_file or data_args.test_file):
            raise ValueError("--glue_dir reads the task's own files: drop --train_file/--validation_file/--test_file")
        if data_args.glue_dir and data_args.task_name is None:
            raise ValueError("--glue_dir needs --task_name to know which task folder to read")
        if data_args.task_name is None and not data_files(data_args):
            raise ValueError("pass --task_name (GLUE, from the Hub or --glue_dir) or --train_file/--validation_file")
        if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
            raise ValueError("nothing to do: pass --do_train, --do_eval and/or --do_predict")
    except ValueError as error:
        parser.error(str(error))
    return parser, model_args, data_args, training_args, method, task


def trained_method(adapter_name_or_path: str | None, method_args: MethodArguments) -> Method:
    """The method of the flags, or, with ``--adapter_name_or_path``, the one saved with that adapter (then no
    method flag may be given; an adapter saved without it takes the flags)."""
    saved = saved_method(adapter_name_or_path) if adapter_name_or_path else None
    if saved is None:
        if adapter_name_or_path and method_args == MethodArguments():
            raise ValueError(
                f"--adapter_name_or_path {adapter_name_or_path} has no method.json (saved by an older run_glue.py): "
                "pass the method flags it was trained with"
            )
        return method_args.method()
    if method_args != MethodArguments():
        raise ValueError(
            f"--adapter_name_or_path {adapter_name_or_path} was trained with {saved.name} (its method.json): drop the "
            "method flags (--surm, --surm_mode, --baseline, ...)"
        )
    return saved


def data_files(data_args: DataTrainingArguments) -> dict[str, str]:
    """``--train_file``/``--validation_file``/``--test_file`` by split; none where ``--glue_dir`` is the source."""
    if data_args.glue_dir:
        return {}
    files = ("train", data_args.train_file), ("validation", data_args.validation_file), ("test", data_args.test_file)
    return {split: path for split, path in files if path}


def load_raw_data(
    task: GlueTask | None,
    data_args: DataTrainingArguments,
    files: dict[str, str],
    splits: list[str],
    cache_dir: str | None,
) -> DatasetDict:
    """The ``splits`` from ``--glue_dir``, else the user's ``files`` (:func:`data_files`), else the Hub."""
    if data_args.glue_dir:
        return load_glue_dir(task, data_args.glue_dir, splits)
    if files:
        return load_files(files, cache_dir)
    raw = load_hub(task, cache_dir)
    return DatasetDict({split: raw[split] for split in splits})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser, model_args, data_args, training_args, method, task = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # as in transformers' example: info on the main process
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info("Method %s; training arguments %s", method, training_args)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train and not training_args.overwrite_output_dir:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is None and os.listdir(training_args.output_dir):
            parser.error(
                f"--output_dir {training_args.output_dir} already exists and is not empty (and holds no checkpoint to "
                "resume from): pass another --output_dir, or --overwrite_output_dir to train into it"
            )
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start over)", last_checkpoint)
    starts_over = training_args.do_train and last_checkpoint is None and training_args.resume_from_checkpoint is None
    if starts_over and training_args.should_save:
        adapter = model_args.adapter_name_or_path
        loads_own = adapter is not None and Path(adapter).resolve() == Path(training_args.output_dir).resolve()
        remove_earlier_run(training_args.output_dir, keep_adapter=loads_own)
    set_seed(training_args.seed)

    files = data_files(data_args)  # with no --task_name there are files (parse_args)
    eval_splits = ("validation",) if files else task.eval_splits
    test_splits = ("test",) if files else task.test_splits
    splits = [
        *(["train"] if training_args.do_train else []),
        *(eval_splits if training_args.do_eval else ()),
        *(test_splits if training_args.do_predict else ()),
    ]
    source = data_args.glue_dir or ", ".join(files.values()) or "the Hub dataset"
    try:
        raw = load_raw_data(task, data_args, files, splits, model_args.cache_dir)
        if missing := [split for split in splits if split not in raw]:
            raise ValueError(f"no {' or '.join(missing)} data for the --do_ flags: pass --{missing[0]}_file")
        if task is not None:
            text_keys, is_regression, label_names = task.text_keys, task.is_regression, task.label_names
        else:
            text_keys, is_regression, label_names = infer_columns(raw)
        check_columns(raw, text_keys, is_regression, source)
        raw = encode_labels(raw, label_names, source, by_name=task is None)
    except (ValueError, OSError) as error:  # OSError: a missing file, no network
        parser.error(str(error))
    num_labels = 1 if is_regression else len(label_names)

    try:
        hub = {
            "cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
            "trust_remote_code": model_args.trust_remote_code,
        }  # fmt: skip
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, num_labels=num_labels,
            finetuning_task=data_args.task_name, **hub,
        )  # fmt: skip
        if label_names is not None:
            config.id2label, config.label2id = dict(enumerate(label_names)), {n: i for i, n in enumerate(label_names)}
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name or model_args.model_name_or_path, use_fast=model_args.use_fast_tokenizer, **hub
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub,
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        heads = head_modules(model)
        if model_args.adapter_name_or_path:
            model = load_trained(model, model_args.adapter_name_or_path)
        else:
            model = apply_method(model, method, data_args.task_name or "glue")
    except (ValueError, OSError, RuntimeError) as error:  # no such model, a head of other size, no target, no adapter
        parser.error(str(error))
    if training_args.do_train and training_args.should_save:  # beside the adapter trained here, before any checkpoint
        os.makedirs(training_args.output_dir, exist_ok=True)
        method.save(training_args.output_dir)
    counts = parameter_counts(model, heads)
    logger.info("trainable parameters: %(trainable_params)d, outside the task head: %(adapter_params)d", counts)

    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def tokenize(batch: dict) -> dict:
        texts = [batch[key] for key in text_keys]
        padding = "max_length" if data_args.pad_to_max_length else False
        return tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)

    with training_args.main_process_first(desc="tokenizing"):
        data = raw.map(tokenize, batched=True, load_from_cache_file=not data_args.overwrite_cache, desc="Tokenizing")

    train_dataset = eval_datasets = predict_datasets = None
    if training_args.do_train:
        train_dataset = data["train"]
        if data_args.max_train_samples is not None:
            train_dataset = first(train_dataset.shuffle(seed=training_args.seed), data_args.max_train_samples)
    if training_args.do_eval:
        eval_datasets = {split: first(data[split], data_args.max_eval_samples) for split in eval_splits}
    if training_args.do_predict:
        predict_datasets = {split: first(data[split], data_args.max_predict_samples) for split in test_splits}

    file_metrics = ("pearson", "spearmanr") if is_regression else ("accuracy",)  # user files without --task_name
    metric = glue_metric(data_args.task_name, task.metrics if task is not None else file_metrics)

    def predicted(logits: np.ndarray | tuple[np.ndarray, ...]) -> np.ndarray:
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits.reshape(-1) if is_regression else np.argmax(logits, axis=1)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        result = metric(predicted(prediction.predictions), prediction.label_ids)
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    push = training_args.push_to_hub
    training_args.push_to_hub = False  # pushed below, with the model card, by surm_nlp.glue.push_to_hub
    trainer_class = AdapterTrainer if hasattr(model, "adapters_config") else Trainer  # adapters saves its own way
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets[next(iter(eval_datasets))] if eval_datasets else None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer),
    )

    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.save_model()
        metrics = result.metrics | {"train_samples": len(train_dataset)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics |= metrics
    if training_args.do_eval:
        for split, dataset in eval_datasets.items():
            prefix = metric_prefix(split)
            metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix) | {
                f"{prefix}_samples": len(dataset)
            }
            trainer.log_metrics(prefix, metrics)
            trainer.save_metrics(prefix, metrics)
            all_metrics |= metrics
    if training_args.do_predict:  # GLUE's submission format, as transformers' example writes it
        for split, dataset in predict_datasets.items():
            unlabelled = dataset.remove_columns([c for c in ("label",) if c in dataset.column_names])
            predictions = predicted(trainer.predict(unlabelled, metric_key_prefix="predict").predictions)
            if trainer.is_world_process_zero():
                name = (data_args.task_name or "custom") + ("-mm" if split.endswith("mismatched") else "")
                path = os.path.join(training_args.output_dir, f"predict_results_{name}.txt")
                with open(path, "w") as f:
                    f.write("index\tprediction\n")
                    for index, item in enumerate(predictions):
                        f.write(f"{index}\t{item:3.3f}\n" if is_regression else f"{index}\t{label_names[item]}\n")
                logger.info("Predictions of %d %s examples in %s", len(predictions), split, path)
    trainer.log_metrics("params", counts)
    trainer.save_metrics("params", counts)
    all_metrics |= counts

    if trainer.is_world_process_zero():
        card = model_card(model_args.model_name_or_path, data_args.task_name or "custom", method, counts, all_metrics)
        with open(os.path.join(training_args.output_dir, "README.md"), "w") as f:
            f.write(card)
        if push:
            repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            logger.info(
                "Pushed to %s",
                push_to_hub(training_args.output_dir, repo_id, training_args.hub_token, training_args.hub_private_repo),
            )
    return all_metrics


def remove_earlier_run(output_dir: str, keep_adapter: bool) -> None:
    """Delete what an earlier run left in ``output_dir`` that would mix with this one's: ``all_results.json``
    (``save_metrics`` merges into it) and, unless this run trains that adapter further, the saved adapter."""
    folder = Path(output_dir)
    results = [folder / "all_results.json"] if (folder / "all_results.json").is_file() else []
    for path in [*results, *([] if keep_adapter else saved_adapter_files(folder))]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def first(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` examples of ``dataset`` (all of them when ``n`` is None)."""
    return dataset if n is None else dataset.select(range(min(len(dataset), n)))


def infer_columns(raw: DatasetDict) -> tuple[tuple[str, ...], bool, tuple[str, ...] | None]:
    """For user files without --task_name: text columns, regression or not, and label names (as the HF example)."""
    labelled = [dataset for split, dataset in raw.items() if is_labelled(split)]
    if not labelled:
        raise ValueError("--test_file alone does not say the labels: pass --task_name, or --train_file with it")
    if "label" not in labelled[0].column_names:
        raise ValueError(f"the data needs a `label` column (has {', '.join(labelled[0].column_names)})")
    is_regression = labelled[0].features["label"].dtype in ("float32", "float64")
    others = [c for c in labelled[0].column_names if c not in ("label", "idx", "index")]
    text_keys = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= set(others) else tuple(others[:2])
    if is_regression:
        return text_keys, True, None
    labels = sorted({str(label) for dataset in labelled for label in dataset["label"]})
    return text_keys, False, tuple(labels)


if __name__ == "__main__":
    main()
    end_distributed_run()
