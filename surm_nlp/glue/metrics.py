"""GLUE metrics: ``evaluate.load("glue", task)`` when the Hub is reachable, the same formulas locally otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from huggingface_hub import constants
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

logger = logging.getLogger(__name__)

LOCAL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda predictions, labels: float((predictions == labels).mean()),
    "f1": lambda predictions, labels: float(f1_score(labels, predictions)),
    "matthews_correlation": lambda predictions, labels: float(matthews_corrcoef(labels, predictions)),
    "pearson": lambda predictions, labels: float(pearsonr(predictions, labels)[0]),
    "spearmanr": lambda predictions, labels: float(spearmanr(predictions, labels)[0]),
}


def local_glue_metric(names: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The GLUE metrics ``names`` (accuracy, binary F1, Matthews correlation, Pearson, Spearman) with sklearn/scipy."""
    return {name: LOCAL_METRICS[name](np.asarray(predictions), np.asarray(labels)) for name in names}


def glue_metric(task_name: str | None, names: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """A function (predictions, labels) → metrics: the Hub's ``glue`` metric if online, else the local one."""
    if task_name is not None and not constants.HF_HUB_OFFLINE:
        try:
            import evaluate

            hub = evaluate.load("glue", task_name)
            return lambda predictions, labels: hub.compute(predictions=predictions, references=labels)
        except Exception as error:  # no network, no cache: same formulas, computed locally
            logger.warning("evaluate.load('glue', %r) failed (%s); using the local GLUE metrics", task_name, error)
    return lambda predictions, labels: local_glue_metric(names, predictions, labels)
