"""GLUE: tasks, data loading, metrics, fine-tuning methods and model cards for ``glue_scripts/run_glue.py``."""

from .data import check_columns, encode_labels, load_files, load_glue_dir, load_hub
from .hub import model_card, push_to_hub
from .methods import (
    BASELINES,
    SURM_CHOICES,
    SURM_MODES,
    Method,
    apply_method,
    head_modules,
    load_trained,
    parameter_counts,
    saved_adapter_files,
    saved_method,
)
from .metrics import glue_metric, local_glue_metric
from .tasks import GLUE_TASKS, GlueTask, get_task, is_labelled, metric_prefix

__all__ = [
    "BASELINES",
    "GLUE_TASKS",
    "SURM_CHOICES",
    "SURM_MODES",
    "GlueTask",
    "Method",
    "apply_method",
    "check_columns",
    "encode_labels",
    "get_task",
    "glue_metric",
    "head_modules",
    "is_labelled",
    "load_files",
    "load_glue_dir",
    "load_hub",
    "load_trained",
    "local_glue_metric",
    "metric_prefix",
    "model_card",
    "parameter_counts",
    "push_to_hub",
    "saved_adapter_files",
    "saved_method",
]
