"""Evaluation: clip -> video -> study predictions, metrics with bootstrap CIs, run comparisons.

The maths over predictions lives in ``echoclr_cli.metrics`` and is re-exported here, so callers
import everything evaluation-related from this module.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- metrics (re-exported)
from echoclr_cli.metrics import (  # noqa: F401
    COUNT_METRICS,
    RANKING_METRICS,
    THRESHOLD_METRICS,
    THRESHOLD_NAMES,
    aggregate,
    aggregate_levels,
    auroc_rank,
    batch_metrics,
    bootstrap_ci,
    bootstrap_distribution,
    check_arrays,
    choose_thresholds,
    compare_runs,
    compute_metrics,
    compute_metrics_with_reasons,
    delong_covariance,
    delong_test,
    evaluate_frame,
    evaluate_predictions,
    metrics_to_frame,
    one_class_reason,
    operating_points,
    percentile_interval,
    pr_curve,
    resample_indices,
)
