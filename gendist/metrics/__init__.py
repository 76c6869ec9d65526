"""Evaluation metrics for generative models: mode coverage, two-sample statistics and likelihood bounds."""
from gendist.metrics.likelihood import (effective_sample_size, importance_weighted_bound, log_bernoulli_logits,
                                        log_normal_diag, log_standard_normal)
from gendist.metrics.modes import mode_coverage
from gendist.metrics.two_sample import (classifier_two_sample_test, frechet_distance, kernel_inception_distance,
                                        mmd2, mmd_permutation_test, precision_recall)

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
