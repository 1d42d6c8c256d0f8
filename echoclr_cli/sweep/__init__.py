"""`echoclr sweep`: the label-efficiency grid as many independent fine-tuning runs.

A sweep is a grid ``task x init x ratio x lr x seed`` (the LR grid ``sweep.low_ratio_lrs`` applies
at ratios <= ``sweep.low_ratio``, ``sweep.lrs`` above). Every grid point is one ordinary fine-tune
run dir under ``SWEEP/runs/{task}/{init}/r{ratio}_lr{lr}_s{seed}``, so the sweep is:

- idempotent: a run with a complete ``metrics.json`` is never trained again;
- resumable: a run dir with ``checkpoints/last.pt`` but no ``metrics.json`` is resumed
  (``resume=True``, same config, so the engine's config check passes); any other leftover
  (a run that died before its first checkpoint) is restarted with ``overwrite=True``;
- shardable: ``shard=(i, n)`` takes the runs whose index in the sorted full plan is ``i`` modulo
  ``n``. The assignment ignores what is done, so shards never overlap (SLURM job arrays, one
  process per GPU: docs/SLURM.md).

Modules: ``grid`` (names, LR grid, parsing), ``inits`` (which inits exist), ``state`` (what a
run dir / sweep dir says), ``plan`` (the grid with status and measured cost), ``run`` (execution),
``launch`` (the ``local`` / ``slurm`` launchers through submitit, ``sweep.launcher``),
``results`` (selection on val, tables, figures). Files in the sweep dir: ``sweep.yaml``
(resolved config), ``plan.csv``, ``runs/...``, ``selection.csv``, ``results.csv``
(``schema.RESULT_COLUMNS``), ``table_{metric}_{task}_{split}.csv`` (init x ratio, paper-style)
and ``label_efficiency_{task}_{split}.png`` (unless ``evaluate.plots`` is off).
"""

from echoclr_cli.events import fmt_duration
from echoclr_cli.sweep.grid import (
    INIT_ORDER,
    NAME_RE,
    SSL_METHODS,
    fmt_number,
    lr_grid,
    parse_shard,
    run_dir_name,
)
from echoclr_cli.sweep.inits import PretrainSpec, kinetics_unavailable, resolve_inits
from echoclr_cli.sweep.plan import CostModel, RunSpec, SweepPlan, plan_sweep, run_config, shard_runs
from echoclr_cli.sweep.results import (
    SweepTable,
    aggregate,
    collect_results,
    results_table,
    select_models,
)
from echoclr_cli.sweep.run import SweepResult, preflight_sweep, run_sweep
from echoclr_cli.sweep.state import check_sweep_config, read_metrics, run_status

__all__ = [
    "INIT_ORDER",
    "NAME_RE",
    "SSL_METHODS",
    "CostModel",
    "PretrainSpec",
    "RunSpec",
    "SweepPlan",
    "SweepResult",
    "SweepTable",
    "aggregate",
    "check_sweep_config",
    "collect_results",
    "fmt_duration",
    "fmt_number",
    "kinetics_unavailable",
    "lr_grid",
    "parse_shard",
    "plan_sweep",
    "preflight_sweep",
    "read_metrics",
    "resolve_inits",
    "results_table",
    "run_config",
    "run_dir_name",
    "run_status",
    "run_sweep",
    "select_models",
    "shard_runs",
]
