"""GLUE data from the Hub, from a local folder in the official TSV layout, or from csv/tsv/json files."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

from .tasks import GlueTask, is_labelled


def load_glue_dir(task: GlueTask, glue_dir: str | Path, splits: Sequence[str] | None = None) -> DatasetDict:
    """``{glue_dir}/{task.folder}/train.tsv``, ``dev*.tsv`` (and ``test*.tsv``) as Hub-style splits.

    ``splits`` defaults to ``train`` and the task's validation split(s). The files are read verbatim
    (``quoting=csv.QUOTE_NONE``: GLUE sentences contain unbalanced quotes; CoLA's train/dev have no
    header; MRPC starts with a byte-order mark). Labelled splits have the text keys and ``label``
    (ids, or floats for STS-B); test splits only the text keys.
    """
    folder = Path(glue_dir) / task.folder
    splits = ("train", *task.eval_splits) if splits is None else splits
    files = {split: folder / task.tsv_file(split) for split in splits}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"GLUE task {task.name!r} needs {', '.join(missing)}: --glue_dir must hold the official GLUE layout "
            f"({', '.join(f'{task.folder}/{task.tsv_file(split)}' for split in splits)})"
        )
    return DatasetDict({split: _read_tsv(task, split, path) for split, path in files.items()})


def _read_tsv(task: GlueTask, split: str, path: Path) -> Dataset:
    tsv_columns, has_header = task.tsv_layout(split)
    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        header=0 if has_header else None,
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    absent = [str(c) for c in tsv_columns.values() if c not in frame.columns]
    if absent:
        raise ValueError(
            f"{path} has no column(s) {', '.join(absent)} of GLUE task {task.name!r}; "
            f"is this the {task.folder} file? (columns: {', '.join(map(str, frame.columns))})"
        )
    columns = {key: frame[column].tolist() for key, column in tsv_columns.items()}
    if "label" in columns:
        labels = columns["label"]
        regression = task.is_regression
        columns["label"] = [float(v) for v in labels] if regression else label_ids(labels, task.label_names, str(path))
    return Dataset.from_dict(columns)


def label_ids(labels: Iterable[str], label_names: Sequence[str], where: str) -> list[int]:
    """Label names (``entailment``, ``"1"``) → their index in ``label_names``, or a ValueError naming unknown ones."""
    ids = {name: i for i, name in enumerate(label_names)}
    labels = list(labels)
    unknown = sorted(set(labels) - ids.keys())
    if unknown:
        raise ValueError(
            f"{where}: labels {unknown[:5]} are not among the task's labels ({', '.join(label_names)}); "
            "check --task_name against the data"
        )
    return [ids[label] for label in labels]


def encode_labels(
    data: DatasetDict, label_names: Sequence[str] | None, source: str, by_name: bool = False
) -> DatasetDict:
    """Class labels of every labelled split as ids into ``label_names``.

    String labels (and, with ``by_name``, any labels by their ``str``) are mapped by name; integer
    labels are checked to be ids of ``label_names``. Regression (``label_names`` None) and test
    splits are left as they are.
    """
    encoded = {}
    for split, dataset in data.items():
        if label_names is None or not is_labelled(split):
            encoded[split] = dataset
        elif by_name or dataset.features["label"].dtype.endswith("string"):  # large_string from csv
            ids = label_ids(map(str, dataset["label"]), label_names, f"{source} split {split!r}")
            encoded[split] = dataset.remove_columns("label").add_column("label", ids)
        elif not all(0 <= label < len(label_names) for label in dataset.unique("label")):
            raise ValueError(
                f"{source} split {split!r} has label ids {sorted(dataset.unique('label'))[:5]} but the task has "
                f"{len(label_names)} labels ({', '.join(label_names)}); check --task_name against the data"
            )
        else:
            encoded[split] = dataset
    return DatasetDict(encoded)


def load_files(files: dict[str, str], cache_dir: str | None = None) -> DatasetDict:
    """User files (``.csv``, ``.tsv``, ``.json``/``.jsonl``) per split, as in transformers' example.

    ``files`` maps ``train``/``validation``/``test`` to a path; all but the test file need a ``label`` column.
    """
    for split, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{split}_file {path} does not exist")
    suffixes = {Path(path).suffix for path in files.values()}
    if len(suffixes) != 1 or not suffixes <= {".csv", ".tsv", ".json", ".jsonl"}:
        raise ValueError(f"the data files must all be .csv, .tsv or .json(l), not {sorted(suffixes)}")
    suffix = suffixes.pop()
    builder = "json" if suffix in (".json", ".jsonl") else "csv"
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
    return load_dataset(builder, data_files=files, cache_dir=cache_dir, **options)


def load_hub(task: GlueTask, cache_dir: str | None = None) -> DatasetDict:
    """The task from the Hugging Face Hub (``nyu-mll/glue``); needs network access or a warm cache."""
    try:
        return load_dataset("nyu-mll/glue", task.name, cache_dir=cache_dir)
    except ConnectionError as error:
        raise ConnectionError(
            f"{error}; offline, read the task from a folder of the official GLUE TSVs with --glue_dir DIR"
        ) from error


def check_columns(data: DatasetDict, text_keys: tuple[str, ...], regression: bool, source: str) -> None:
    """Raise a ValueError naming the fix when the data does not have the task's columns or label type."""
    for split, dataset in data.items():
        labelled = is_labelled(split)
        required = (*text_keys, "label") if labelled else text_keys
        missing = [key for key in required if key not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{source} split {split!r} lacks column(s) {', '.join(missing)} (has {', '.join(dataset.column_names)})"
                "; pass the matching --task_name or rename the columns"
            )
        if not labelled:
            continue
        is_float = dataset.features["label"].dtype.startswith("float")
        if regression != is_float and not isinstance(dataset.features["label"], ClassLabel):
            kind = "float scores (regression)" if regression else "class labels"
            raise ValueError(
                f"{source} split {split!r} has {dataset.features['label'].dtype} labels but the task needs {kind}; "
                "check --task_name against the data"
            )
