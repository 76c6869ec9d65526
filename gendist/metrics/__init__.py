"""Evaluation metrics for generative models: mode coverage, two-sample statistics and likelihood bounds.

The sample-based metrics need scikit-learn and SciPy (about 2 s to import): they are imported on first use
(PEP 562 module __getattr__), so a training process that never evaluates (every rank but 0, a run killed
before its end) does not pay for them.
"""
from __future__ import annotations

import importlib

from gendist.metrics.likelihood import (effective_sample_size, importance_weighted_bound, log_bernoulli_logits,
                                        log_normal_diag, log_standard_normal)

_LAZY = {"mode_coverage": "modes", "classifier_two_sample_test": "two_sample", "frechet_distance": "two_sample",
         "kernel_inception_distance": "two_sample", "mmd2": "two_sample", "mmd_permutation_test": "two_sample",
         "precision_recall": "two_sample"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"gendist.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gendist.metrics' has no attribute '{name}'")


__all__ = [
    "classifier_two_sample_test",
    "effective_sample_size",
    "frechet_distance",
    "importance_weighted_bound",
    "kernel_inception_distance",
    "log_bernoulli_logits",
    "log_normal_diag",
    "log_standard_normal",
    "mmd2",
    "mmd_permutation_test",
    "mode_coverage",
    "precision_recall",
]
