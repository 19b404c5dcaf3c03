"""GLUE data from the Hub, from a local folder in the official TSV layout, or from csv/tsv/json files."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

from .tasks import GlueTask


def load_glue_dir(task: GlueTask, glue_dir: str | Path) -> DatasetDict:
    """``{glue_dir}/{task.folder}/train.tsv`` and ``dev*.tsv`` as Hub-style splits (columns text keys + ``label``).

    The files are read verbatim (``quoting=csv.QUOTE_NONE``: GLUE sentences contain unbalanced
    quotes; CoLA has no header; MRPC starts with a byte-order mark).
    """
    folder = Path(glue_dir) / task.folder
    files = {"train": folder / "train.tsv"} | {split: folder / task.dev_file(split) for split in task.eval_splits}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"GLUE task {task.name!r} needs {', '.join(missing)}: --glue_dir must hold the official GLUE layout "
            f"({task.folder}/train.tsv, {task.folder}/{task.dev_file(task.eval_splits[0])}, ...)"
        )
    return DatasetDict({split: _read_tsv(task, path) for split, path in files.items()})


def _read_tsv(task: GlueTask, path: Path) -> Dataset:
    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        header=0 if task.has_header else None,
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    absent = [str(c) for c in task.tsv_columns.values() if c not in frame.columns]
    if absent:
        raise ValueError(
            f"{path} has no column(s) {', '.join(absent)} of GLUE task {task.name!r}; "
            f"is this the {task.folder} file? (columns: {', '.join(map(str, frame.columns))})"
        )
    columns = {key: frame[column].tolist() for key, column in task.tsv_columns.items()}
    columns["label"] = _labels(task, columns["label"], path)
    return Dataset.from_dict(columns)


def _labels(task: GlueTask, raw: list[str], path: Path) -> list[int] | list[float]:
    if task.is_regression:
        return [float(value) for value in raw]
    ids = {name: i for i, name in enumerate(task.label_names)}
    unknown = sorted(set(raw) - set(ids))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not labels of GLUE task {task.name!r} ({task.label_names})")
    return [ids[value] for value in raw]


def load_files(train_file: str | None, validation_file: str | None, cache_dir: str | None = None) -> DatasetDict:
    """User files (``.csv``, ``.tsv``, ``.json``/``.jsonl``) with a ``label`` column, as in transformers' example."""
    files = {split: f for split, f in (("train", train_file), ("validation", validation_file)) if f}
    for split, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{split}_file {path} does not exist")
    suffixes = {Path(path).suffix for path in files.values()}
    if len(suffixes) != 1 or not suffixes <= {".csv", ".tsv", ".json", ".jsonl"}:
        raise ValueError(f"--train_file/--validation_file must both be .csv, .tsv or .json(l); got {sorted(suffixes)}")
    suffix = suffixes.pop()
    builder = "json" if suffix in (".json", ".jsonl") else "csv"
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
    return load_dataset(builder, data_files=files, cache_dir=cache_dir, **options)


def load_hub(task: GlueTask, cache_dir: str | None = None) -> DatasetDict:
    """The task from the Hugging Face Hub (``nyu-mll/glue``); needs network access or a warm cache."""
    return load_dataset("nyu-mll/glue", task.name, cache_dir=cache_dir)


def check_columns(data: DatasetDict, text_keys: tuple[str, ...], regression: bool, source: str) -> None:
    """Raise a ValueError naming the fix when the data does not have the task's columns or label type."""
    for split, dataset in data.items():
        missing = [key for key in (*text_keys, "label") if key not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{source} split {split!r} lacks column(s) {', '.join(missing)} (has {', '.join(dataset.column_names)})"
                "; pass the matching --task_name or rename the columns"
            )
        is_float = dataset.features["label"].dtype.startswith("float")
        if regression != is_float and not isinstance(dataset.features["label"], ClassLabel):
            kind = "float scores (regression)" if regression else "class labels"
            raise ValueError(
                f"{source} split {split!r} has {dataset.features['label'].dtype} labels but the task needs {kind}; "
                "check --task_name against the data"
            )
