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
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from adapters import AdapterTrainer
from datasets import DatasetDict, Value
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
    get_task,
    glue_metric,
    head_modules,
    load_files,
    load_glue_dir,
    load_hub,
    load_trained,
    metric_prefix,
    model_card,
    parameter_counts,
    push_to_hub,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Hub id (e.g. roberta-base) or local directory of the base model."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a saved classifier whose number of labels differs."}
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained adapter (an output_dir of this script) to evaluate or continue, instead of a new one."
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
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch to max_seq_length (else dynamic)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use the first N shuffled training examples."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N evaluation examples."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the datasets cache."})


@dataclass
class MethodArguments:
    surm: str = field(default="none", metadata={"help": "Structure of the SURM update.", "choices": SURM_CHOICES})
    surm_mode: str = field(default="lora", metadata={"help": "SURM-LoRA or SURM-adapter.", "choices": SURM_MODES})
    surm_rank: int | None = field(default=None, metadata={"help": "Rank of ldr/lowrank."})
    surm_alpha: float = field(default=1.0, metadata={"help": "Scaling α of ΔW = α·S (lora mode)."})
    surm_dropout: float = field(default=0.0, metadata={"help": "Dropout on the SURM/LoRA/adapter input."})
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
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(
    argv: list[str] | None,
) -> tuple[ArgumentParser, ModelArguments, DataTrainingArguments, TrainingArguments, Method, GlueTask | None]:
    dataclasses = (ModelArguments, DataTrainingArguments, MethodArguments, TrainingArguments)
    parser = ArgumentParser(dataclasses, prog=os.path.basename(__file__))
    model_args, data_args, method_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        method = method_args.method()
        task = get_task(data_args.task_name) if data_args.task_name is not None else None
        if data_args.task_name is None and not (data_args.train_file or data_args.validation_file):
            raise ValueError("pass --task_name (GLUE, from the Hub or --glue_dir) or --train_file/--validation_file")
        if data_args.glue_dir and data_args.task_name is None:
            raise ValueError("--glue_dir needs --task_name to know which task folder to read")
    except ValueError as error:
        parser.error(str(error))
    return parser, model_args, data_args, training_args, method, task


def load_raw_data(task: GlueTask | None, data_args: DataTrainingArguments, cache_dir: str | None) -> DatasetDict:
    if data_args.glue_dir:
        return load_glue_dir(task, data_args.glue_dir)
    if data_args.train_file or data_args.validation_file:
        return load_files(data_args.train_file, data_args.validation_file, cache_dir)
    return load_hub(task, cache_dir)


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
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start over)", last_checkpoint)
    set_seed(training_args.seed)

    try:
        raw = load_raw_data(task, data_args, model_args.cache_dir)
        if task is not None:
            text_keys, is_regression, label_names = task.text_keys, task.is_regression, task.label_names
        else:
            text_keys, is_regression, label_names = infer_columns(raw)
            raw = encode_string_labels(raw, label_names)
        check_columns(raw, text_keys, is_regression, data_args.glue_dir or data_args.train_file or "the Hub dataset")
        eval_splits = task.eval_splits if task is not None else ("validation",)
        if training_args.do_train and "train" not in raw:
            raise ValueError("--do_train needs a training split (--train_file, or a GLUE task)")
        if training_args.do_eval and any(split not in raw for split in eval_splits):
            raise ValueError(
                f"--do_eval needs the split(s) {', '.join(eval_splits)} (--validation_file, or a GLUE task)"
            )
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    num_labels = 1 if is_regression else len(label_names)

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, num_labels=num_labels, finetuning_task=data_args.task_name,
        cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
    )  # fmt: skip
    if label_names is not None:
        config.id2label, config.label2id = dict(enumerate(label_names)), {n: i for i, n in enumerate(label_names)}
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir,
        revision=model_args.model_revision, token=model_args.token,
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
        revision=model_args.model_revision, token=model_args.token,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )  # fmt: skip
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    heads = head_modules(model)
    adapter_name = data_args.task_name or "glue"
    if model_args.adapter_name_or_path:
        model = load_trained(model, model_args.adapter_name_or_path)
    else:
        model = apply_method(model, method, adapter_name)
    counts = parameter_counts(model, heads)
    logger.info("trainable parameters: %(trainable_params)d, outside the task head: %(adapter_params)d", counts)

    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def tokenize(batch: dict) -> dict:
        texts = [batch[key] for key in text_keys]
        padding = "max_length" if data_args.pad_to_max_length else False
        return tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)

    with training_args.main_process_first(desc="tokenizing"):
        data = raw.map(tokenize, batched=True, load_from_cache_file=not data_args.overwrite_cache, desc="Tokenizing")

    train_dataset = eval_datasets = None
    if training_args.do_train:
        train_dataset = data["train"]
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.shuffle(seed=training_args.seed).select(
                range(min(len(train_dataset), data_args.max_train_samples))
            )
    if training_args.do_eval:
        eval_datasets = {split: data[split] for split in eval_splits}
        if data_args.max_eval_samples is not None:
            eval_datasets = {
                s: d.select(range(min(len(d), data_args.max_eval_samples))) for s, d in eval_datasets.items()
            }

    file_metrics = ("pearson", "spearmanr") if is_regression else ("accuracy",)  # user files without --task_name
    metric = glue_metric(data_args.task_name, task.metrics if task is not None else file_metrics)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = np.squeeze(logits) if is_regression else np.argmax(logits, axis=1)
        result = metric(predictions, prediction.label_ids)
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


def infer_columns(raw: DatasetDict) -> tuple[tuple[str, ...], bool, tuple[str, ...] | None]:
    """For user files without --task_name: text columns, regression or not, and label names (as the HF example)."""
    split = raw["train"] if "train" in raw else next(iter(raw.values()))
    if "label" not in split.column_names:
        raise ValueError(f"the data needs a `label` column (has {', '.join(split.column_names)})")
    is_regression = split.features["label"].dtype in ("float32", "float64")
    others = [c for c in split.column_names if c not in ("label", "idx", "index")]
    text_keys = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= set(others) else tuple(others[:2])
    if is_regression:
        return text_keys, True, None
    labels = sorted({str(label) for dataset in raw.values() for label in dataset["label"]})
    return text_keys, False, tuple(labels)


def encode_string_labels(raw: DatasetDict, label_names: tuple[str, ...] | None) -> DatasetDict:
    """Labels → ids in the sorted order of ``label_names``, the same in every split."""
    if label_names is None:
        return raw
    ids = {name: i for i, name in enumerate(label_names)}
    features = next(iter(raw.values())).features.copy()
    features["label"] = Value("int64")
    return raw.map(lambda batch: {"label": [ids[str(y)] for y in batch["label"]]}, batched=True, features=features)


if __name__ == "__main__":
    main()
