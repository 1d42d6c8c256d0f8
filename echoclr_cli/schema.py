"""Column schemas of the tables a sweep writes (one definition, read by sweep and plots).

``RESULT_COLUMNS`` is results.csv: one row per selected run x split x level x metric.
``PLAN_COLUMNS`` is plan.csv, ``SELECTION_COLUMNS`` is selection.csv.
"""

from __future__ import annotations

# what names one run of the grid (the first columns of results.csv and selection.csv)
RUN_COLUMNS = ("task", "init", "ratio", "n_studies", "seed", "lr")
# results.csv (and the frame plots.label_efficiency_table / plot_label_efficiency read)
RESULT_COLUMNS = (
    *RUN_COLUMNS,
    "split",
    "level",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "ci_unit",  # what the CI resampled: patient | study | video | study (no patient id)
)
# the columns a figure or a label-efficiency table needs (lr, n, ci_unit are informative only)
RESULT_KEY_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in ("lr", "n", "ci_unit"))

PLAN_COLUMNS = (
    "index",
    "task",
    "init",
    "init_source",
    "ratio",
    "lr",
    "seed",
    "n_studies",
    "run_dir",
    "status",
    "est_seconds",
    "overrides",
)

SELECTION_COLUMNS = (
    *RUN_COLUMNS,
    "run_dir",
    "val_auroc",
    "val_loss",
    "candidates",
    "finished",
    "reason",
)
