"""The nine GLUE tasks: input columns, labels, metrics and the official TSV layout of each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task as the Hub's ``nyu-mll/glue`` names it, and where its fields are in the official TSVs.

    ``tsv_columns`` maps each Hub column (the text keys and ``label``) to a TSV header name, or to a
    column index when the train/dev files have no header (CoLA, whose unlabelled ``test.tsv`` has the
    header ``index, sentence``). ``label_names`` is None for regression (STS-B); TSV labels are
    strings and are mapped to the Hub's integer ids through it.
    """

    name: str
    folder: str
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    tsv_columns: dict[str, str | int]
    eval_splits: tuple[str, ...] = ("validation",)
    has_header: bool = True

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def eval_metric_keys(self) -> tuple[str, ...]:
        """The task's scores as run_glue.py records them: ``eval_accuracy``, ``eval_f1``, ``eval_mm_accuracy``..."""
        return tuple(f"{metric_prefix(split)}_{metric}" for split in self.eval_splits for metric in self.metrics)

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The unlabelled splits of ``--do_predict``: ``test``, or MNLI's ``test_matched`` and ``test_mismatched``."""
        return tuple(split.replace("validation", "test") for split in self.eval_splits)

    def tsv_file(self, split: str) -> str:
        """``train`` → ``train.tsv``, ``validation_matched`` → ``dev_matched.tsv``, ``test`` → ``test.tsv``."""
        return split.replace("validation", "dev") + ".tsv"

    def tsv_layout(self, split: str) -> tuple[dict[str, str | int], bool]:
        """The columns to read from the split's TSV and whether it has a header (test files: text only, header)."""
        if is_labelled(split):
            return self.tsv_columns, self.has_header
        return {key: self.tsv_columns[key] if self.has_header else key for key in self.text_keys}, True


def is_labelled(split: str) -> bool:
    """Train and validation splits have labels; GLUE's test splits (``test``, ``test_matched``...) do not."""
    return not split.startswith("test")


def metric_prefix(split: str) -> str:
    """``eval`` for a validation split, ``eval_mm`` for MNLI's mismatched one."""
    return "eval_mm" if split.endswith("mismatched") else "eval"


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
_NLI_BINARY = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola", "CoLA", ("sentence",), ("0", "1"), ("matthews_correlation",),
            {"sentence": 3, "label": 1}, has_header=False,
        ),
        GlueTask("sst2", "SST-2", ("sentence",), ("0", "1"), ("accuracy",), {"sentence": "sentence", "label": "label"}),
        GlueTask(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("0", "1"), ("accuracy", "f1"),
            {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
        ),
        GlueTask(
            "qqp", "QQP", ("question1", "question2"), ("0", "1"), ("accuracy", "f1"),
            {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
        ),
        GlueTask(
            "stsb", "STS-B", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"),
            {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
        ),
        GlueTask(
            "mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
            {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
            eval_splits=("validation_matched", "validation_mismatched"),
        ),
        GlueTask(
            "qnli", "QNLI", ("question", "sentence"), _NLI_BINARY, ("accuracy",),
            {"question": "question", "sentence": "sentence", "label": "label"},
        ),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), _NLI_BINARY, ("accuracy",), _PAIR),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("0", "1"), ("accuracy",), _PAIR),
    )
}  # fmt: skip


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (case-insensitive; ``sst-2``/``sts-b`` accepted), else a ValueError listing them."""
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}: choose one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
