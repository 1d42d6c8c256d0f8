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

Model selection (per ``task, init, ratio, seed``, over the LR grid) happens on the validation
split only: the highest study-level val AUROC (``sweep.select_metric: val_auroc``; ties -> lower
val loss, then lower LR) or the lowest val loss (``val_loss``; ties -> higher AUROC, then lower
LR). A run whose val AUROC is undefined (one-class val split, FAULTS.md 15) is never selected;
a cell is only selected once all its LR runs are finished. The test and ext_test metrics of the
selected run (computed by the fine-tune run itself) are the sweep's results.

Files in the sweep dir: ``sweep.yaml`` (resolved config), ``plan.csv`` (every run, its status
and cost estimate), ``runs/...``, ``selection.csv`` (what was selected per cell and why),
``results.csv`` (long table, ``plots.RESULT_COLUMNS`` + ``lr, n``), ``table_{metric}_{task}_
{split}.csv`` (init x ratio, paper-style) and ``label_efficiency_{task}_{split}.png`` (unless
``evaluate.plots`` is off).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from echoclr_cli.config import Config, config_to_dict, deep_merge, diff_configs
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write_csv, atomic_write_text
from echoclr_cli.plots import RESULT_COLUMNS, label_efficiency_table, plot_label_efficiency

SSL_METHODS = ("simclr", "mi-simclr", "echoclr")
INIT_ORDER = ("random", "kinetics", *SSL_METHODS)  # table rows / plot lines in this order
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # init / task names used as dir names
SELECT_LEVEL = "study"
ERROR_FILE = "sweep_error.txt"  # in a run dir whose fine-tune raised a UserError (the message)
TABLE_METRICS = ("auroc", "ap")
# Rough costs when no finished run gives a rate (seconds): one labeled training study for one
# epoch (r3d_18 at 16x112x112 on one GPU: about 3 videos per study), and the final evaluation.
DEFAULT_SECONDS_PER_STUDY_EPOCH = {"cuda": 0.01, "cpu": 0.5}
DEFAULT_EVAL_SECONDS = {"cuda": 30.0, "cpu": 10.0}  # final evaluation of val/test/ext_test
# Config keys a sweep may change between invocations without invalidating finished runs:
# the grid itself, where things live, how many workers, and the keys set per run.
SWEEP_MUTABLE = (
    "sweep.",
    "paths.",
    "profile",
    "runtime.workers",
    "runtime.device",
    "runtime.threads",
    "runtime.compile",
    "runtime.seed",
    "finetune.task",
    "finetune.init",
    "finetune.frac",
    "finetune.frac_seed",
    "finetune.optim.learning_rate",
    "evaluate.splits",
)
PLAN_COLUMNS = [
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
]
RESULTS_COLUMNS = [*RESULT_COLUMNS[:5], "lr", *RESULT_COLUMNS[5:], "n"]
SELECTION_COLUMNS = [
    "task",
    "init",
    "ratio",
    "n_studies",
    "seed",
    "lr",
    "run_dir",
    "val_auroc",
    "val_loss",
    "candidates",
    "finished",
    "reason",
]

Progress = Callable[[dict], None]
FinetuneFn = Callable[..., Any]
PretrainFn = Callable[..., Any]


# --------------------------------------------------------------------------- plan data
@dataclass(frozen=True)
class RunSpec:
    """One grid point = one fine-tune run dir (``run_dir`` is relative to the sweep dir)."""

    index: int  # position in the sorted full plan (shards use index % n)
    task: str
    init: str  # name: random | kinetics | a pretrain run name (simclr, ...)
    init_source: str  # finetune.init value: random | kinetics | absolute pretrain run dir
    ratio: float
    lr: float
    seed: int
    n_studies: int  # labeled training studies at this ratio
    run_dir: str
    status: str  # done | partial (resume from last.pt) | pending
    est_seconds: float  # history seconds when done, else an estimate
    overrides: dict[str, Any]  # nested config overrides applied to the sweep's config

    @property
    def cell(self) -> tuple[str, str, float, int]:
        """Model-selection group: the LR grid of one (task, init, ratio, seed)."""
        return (self.task, self.init, self.ratio, self.seed)


@dataclass(frozen=True)
class PretrainSpec:
    """An SSL init that has to be (re)pretrained before the sweep (``--pretrain-missing``)."""

    method: str
    run_dir: Path
    status: str  # missing | partial
    command: str  # the equivalent `echoclr pretrain` command line


@dataclass
class SweepPlan:
    runs: list[RunSpec]
    inits: list[str]  # resolved init names, in table order
    init_notes: dict[str, str]  # init -> where it was found / why it was left out
    pretrain: list[PretrainSpec]
    tasks: list[str]
    splits: list[str]  # evaluation splits present in the data (subset of sweep.splits)
    split_notes: list[str]
    estimate_source: str  # history (rate from finished runs) | default (rough constant)

    def frame(self) -> pd.DataFrame:
        """plan.csv: one row per run (``overrides`` as JSON)."""
        rows = [
            {
                "index": r.index,
                "task": r.task,
                "init": r.init,
                "init_source": r.init_source,
                "ratio": r.ratio,
                "lr": r.lr,
                "seed": r.seed,
                "n_studies": r.n_studies,
                "run_dir": r.run_dir,
                "status": r.status,
                "est_seconds": round(r.est_seconds, 1),
                "overrides": json.dumps(r.overrides, sort_keys=True),
            }
            for r in self.runs
        ]
        return pd.DataFrame(rows, columns=PLAN_COLUMNS)

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "partial": 0, "pending": 0}
        for r in self.runs:
            out[r.status] += 1
        return out

    def pending_seconds(self, runs: Sequence[RunSpec] | None = None) -> float:
        return float(
            sum(r.est_seconds for r in (self.runs if runs is None else runs) if r.status != "done")
        )

    def summary(self, runs: Sequence[RunSpec] | None = None) -> list[str]:
        """Plain-text lines for the terminal: grid size, statuses, cost, inits, pretraining."""
        runs = self.runs if runs is None else runs
        counts = {k: sum(r.status == k for r in runs) for k in ("done", "partial", "pending")}
        lines = [
            f"{len(runs)} runs ({counts['done']} done, {counts['partial']} to resume, "
            f"{counts['pending']} to train); estimated time left {fmt_duration(self.pending_seconds(runs))} "
            f"({'from finished runs' if self.estimate_source == 'history' else 'rough default'})",
            f"tasks {', '.join(self.tasks)}; results on {', '.join(self.splits)}",
        ]
        lines += [f"init {name}: {note}" for name, note in self.init_notes.items()]
        lines += [f"pretrain first: {p.command}" for p in self.pretrain]
        lines += self.split_notes
        return lines


@dataclass
class SweepTable:
    """A paper-style table: rows = init, columns = ratio ``"1% (n=53)"``.

    ``values``/``low``/``high`` are floats (one seed: value and bootstrap CI; several seeds:
    mean and mean -/+ sd); ``text`` holds the cells as strings with the best value per column
    suffixed ``" *"``; ``best`` marks those cells.
    """

    task: str
    split: str
    level: str
    metric: str
    values: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    n_seeds: pd.DataFrame
    text: pd.DataFrame
    best: pd.DataFrame

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.task}_{self.split}"


@dataclass
class SweepResult:
    plan: SweepPlan
    shard: tuple[int, int] | None
    assigned: list[RunSpec]  # the runs this invocation is responsible for (its shard)
    trained: list[str] = field(default_factory=list)  # run dirs trained (or resumed) now
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run dir, UserError text)
    pretrained: list[str] = field(default_factory=list)
    results: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RESULTS_COLUMNS))
    selection: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SELECTION_COLUMNS))
    tables: dict[str, SweepTable] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    dry_run: bool = False


# --------------------------------------------------------------------------- names and numbers
def fmt_number(x: float) -> str:
    """Short, stable, filesystem-safe number: 0.01 -> '0.01', 1e-4 -> '0.0001', 1e-5 -> '1e-05'."""
    return f"{float(x):g}".replace("+", "")


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def parse_list(text: str, cast: Callable[[str], Any], option: str) -> list[Any]:
    """``"0.01,0.1,1.0"`` -> ``[0.01, 0.1, 1.0]`` for the CLI's list options (UserError naming
    ``option`` on a bad item)."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    try:
        out = [cast(x) for x in items]
    except ValueError:
        raise UserError(
            f"{option} '{text}' is not a comma-separated list of {cast.__name__}",
            fix=f"write e.g. {option} 0.01,0.1,1.0"
            if cast is float
            else f"write e.g. {option} a,b",
        ) from None
    if not out:
        raise UserError(f"{option} is empty", fix=f"give at least one value to {option}")
    return out


def run_dir_name(task: str, init: str, ratio: float, lr: float, seed: int) -> str:
    return f"runs/{task}/{init}/r{fmt_number(ratio)}_lr{fmt_number(lr)}_s{seed}"


def lr_grid(cfg: Config, ratio: float) -> list[float]:
    """``low_ratio_lrs`` at ratios <= ``low_ratio`` (the paper's 1/5/10%), else ``lrs``."""
    sw = cfg.sweep
    grid = sw.low_ratio_lrs if ratio <= sw.low_ratio + 1e-12 else sw.lrs
    return sorted(set(float(x) for x in grid))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (for the CLI's ``--shard``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(
            f"--shard '{text}' is not i/n with 0 <= i < n",
            fix="write e.g. --shard 0/4 (SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
        )
    return int(m.group(1)), int(m.group(2))


def _check_grid(cfg: Config) -> None:
    sw = cfg.sweep
    for key in ("ratios", "inits", "tasks", "lrs", "low_ratio_lrs", "seeds", "splits"):
        if not getattr(sw, key):
            raise UserError(f"sweep.{key} is empty", fix=f"give at least one value for sweep.{key}")
    bad = [r for r in sw.ratios if not 0 < r <= 1]
    if bad:
        raise UserError(
            f"sweep.ratios {bad} outside (0, 1]", fix="use label fractions like 0.01,0.1,1.0"
        )
    bad = [x for x in [*sw.lrs, *sw.low_ratio_lrs] if not x > 0]
    if bad:
        raise UserError(
            f"sweep learning rates {bad} must be > 0", fix="fix sweep.lrs / sweep.low_ratio_lrs"
        )
    for key in ("tasks", "inits"):
        bad = [x for x in getattr(sw, key) if not NAME_RE.match(x)]
        if bad:
            raise UserError(
                f"sweep.{key} {bad}: names must be letters, digits, '.', '_' or '-'",
                fix=f"rename them in sweep.{key}",
            )
    if "auto" in sw.inits and len(sw.inits) > 1:
        raise UserError(
            f"sweep.inits {sw.inits}: 'auto' cannot be combined with named inits",
            fix="use either --inits auto or a list such as random,kinetics,echoclr",
        )
    if "val" in sw.splits:
        raise UserError(
            "sweep.splits must not contain 'val' (the validation split selects models)",
            fix="use test and/or ext_test",
        )


# --------------------------------------------------------------------------- inits
def pretrain_root(cfg: Config) -> Path:
    return Path(cfg.sweep.pretrain_dir or Path(cfg.paths.runs) / "pretrain").expanduser().resolve()


def pretrain_command(method: str, data_dir: Path, run_dir: Path, resume: bool = False) -> str:
    """The `echoclr pretrain` command line that makes (or finishes) the init ``method``."""
    q = shlex.quote
    cmd = f"echoclr pretrain --method {q(method)} --data {q(str(data_dir))} --out {q(str(run_dir))}"
    return cmd + (" --resume" if resume else "")


def pretrain_progress(run_dir: Path) -> tuple[int | None, int | None]:
    """``(epochs done, epochs planned)`` of a pretrain run from its history.csv / config.yaml
    (None where the file is absent or unreadable)."""
    done = planned = None
    try:
        hist = pd.read_csv(run_dir / "history.csv")
        done = int(hist["epoch"].max()) if "epoch" in hist and len(hist) else 0
    except (OSError, ValueError, pd.errors.EmptyDataError):
        pass
    try:
        planned = int(yaml.safe_load((run_dir / "config.yaml").read_text())["pretrain"]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    return done, planned


def _model_mismatch(run_dir: Path, cfg: Config) -> str | None:
    """How a pretrain run's model differs from the sweep's (arch/width), or None."""
    try:
        model = yaml.safe_load((run_dir / "config.yaml").read_text()).get("model") or {}
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    diffs = [
        f"model.{k} {model[k]!r} (sweep: {getattr(cfg.model, k)!r})"
        for k in ("arch", "width")
        if k in model and model[k] != getattr(cfg.model, k)
    ]
    return ", ".join(diffs) or None


def kinetics_url(arch: str) -> str:
    from echoclr_cli.weights import kinetics_weight_path

    name = kinetics_weight_path(arch).name
    return f"https://download.pytorch.org/models/{name}"


def kinetics_file(cfg: Config) -> Path:
    from echoclr_cli.weights import kinetics_weight_path

    return (
        Path(cfg.finetune.weights).expanduser()
        if cfg.finetune.weights
        else kinetics_weight_path(cfg.model.arch)
    )


def _ssl_state(cfg: Config, run_dir: Path) -> tuple[str, str]:
    """``(state, detail)`` of a pretrain run dir: ready | partial | missing | mismatch."""
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return "missing", f"no {run_dir / 'checkpoints' / 'last.pt'}"
    mismatch = _model_mismatch(run_dir, cfg)
    if mismatch:
        return "mismatch", f"{run_dir} was pretrained with {mismatch}"
    done, planned = pretrain_progress(run_dir)
    if done is not None and planned is not None and done < planned:
        return "partial", f"{run_dir} stopped at epoch {done} of {planned}"
    return "ready", f"found {run_dir}"


def resolve_inits(
    cfg: Config, data_dir: Path
) -> tuple[list[tuple[str, str]], dict[str, str], list[PretrainSpec]]:
    """Init names -> ``finetune.init`` values, notes per init, and pretraining to do first.

    ``auto``: random, kinetics when its weight file is present (and ``model.width`` is 1.0), and
    every finished pretrain run under the pretrain dir (methods first); with
    ``sweep.pretrain_missing`` the three SSL methods are always included and missing ones are
    pretrained. Named inits must exist: a missing SSL run raises UserError with the exact
    `echoclr pretrain` command (unless ``pretrain_missing``), a missing Kinetics file with where
    to put it.
    """
    sw = cfg.sweep
    root = pretrain_root(cfg)
    data_dir = Path(data_dir).expanduser().resolve()
    auto = sw.inits == ["auto"]
    notes: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    to_pretrain: list[PretrainSpec] = []
    problems: list[str] = []
    fixes: list[str] = []

    if auto:
        found = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name))
            if root.is_dir()
            else []
        )
        extra = [n for n in found if n not in INIT_ORDER]
        names = ["random", "kinetics", *SSL_METHODS, *extra]
    else:
        names = list(dict.fromkeys(sw.inits))

    for name in names:
        if name == "random":
            out.append((name, "random"))
            notes[name] = "torchvision initialisation"
        elif name == "kinetics":
            path = kinetics_file(cfg)
            if not path.is_file() or cfg.model.width != 1.0:
                why = (
                    f"no Kinetics-400 weights at {path}"
                    if not path.is_file()
                    else f"Kinetics-400 weights need model.width 1.0 (sweep: {cfg.model.width})"
                )
                if auto:
                    notes[name] = f"left out: {why}"
                    continue
                problems.append(why)
                fixes.append(
                    f"copy {path.name} (from {kinetics_url(cfg.model.arch)}) to {path}, or set "
                    "finetune.weights to the file"
                    if not path.is_file()
                    else "pass --set model.width=1.0 (or --profile paper)"
                )
                continue
            out.append((name, "kinetics"))
            notes[name] = f"found {path}"
        else:
            run_dir = root / name
            state, detail = _ssl_state(cfg, run_dir)
            can_make = sw.pretrain_missing and name in SSL_METHODS
            if state == "ready":
                out.append((name, str(run_dir)))
                notes[name] = detail
            elif state in ("missing", "partial") and can_make:
                cmd = pretrain_command(name, data_dir, run_dir, resume=state == "partial")
                to_pretrain.append(PretrainSpec(name, run_dir, state, cmd))
                out.append((name, str(run_dir)))
                notes[name] = f"to pretrain first ({detail})"
            elif auto:
                notes[name] = f"left out: {detail}"
            elif state == "mismatch":
                problems.append(detail)
                fixes.append(
                    f"pretrain {name} again with the sweep's model, or sweep with its model"
                )
            elif name in SSL_METHODS:
                problems.append(f"init '{name}': {detail}")
                fixes.append(pretrain_command(name, data_dir, run_dir, resume=state == "partial"))
            else:
                problems.append(f"init '{name}': {detail}")
                fixes.append(
                    f"put a pretrain run named {name} under {root} (or set sweep.pretrain_dir)"
                )
    if problems:
        ssl = any(f.startswith("echoclr pretrain") for f in fixes)
        tail = (
            " (or re-run the sweep with --pretrain-missing)"
            if ssl and not sw.pretrain_missing
            else ""
        )
        raise UserError(
            "sweep inits not available: " + "; ".join(problems),
            fix="; ".join(f"run `{f}`" if f.startswith("echoclr ") else f for f in fixes) + tail,
        )
    if not out:
        raise UserError(
            "sweep.inits resolved to nothing", fix="name inits explicitly, e.g. --inits random"
        )
    order = {n: i for i, n in enumerate(INIT_ORDER)}
    out.sort(key=lambda x: (order.get(x[0], len(order)), x[0]))
    return out, notes, to_pretrain


# --------------------------------------------------------------------------- run dir state
def read_metrics(run_dir: Path) -> dict | None:
    """A run's metrics.json when present and complete (a dict with a ``val`` section), else None.

    metrics.json is written atomically at the very end of a fine-tune run, so a present,
    parseable file with validation metrics means the run finished.
    """
    try:
        data = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("val"), dict) else None


def run_status(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    if read_metrics(run_dir) is not None:
        return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "pending"


def read_history(run_dir: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(Path(run_dir) / "history.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


def _val_auroc(metrics: dict) -> float:
    cell = ((metrics.get("val") or {}).get(SELECT_LEVEL) or {}).get("auroc") or {}
    v = cell.get("value") if isinstance(cell, dict) else None
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def _best_epoch(run_dir: Path) -> int | None:
    """The epoch whose weights a fine-tune run tested (``finetune.json``), when recorded."""
    try:
        best = json.loads((Path(run_dir) / "finetune.json").read_text()).get("best_epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return int(best) if isinstance(best, int | float) and math.isfinite(best) else None


def _val_loss(history: pd.DataFrame | None, monitor: str, best_epoch: int | None = None) -> float:
    """Validation loss of the weights the run kept: its recorded best epoch, else the best
    epoch by ``finetune.monitor``."""
    if history is None or "val_loss" not in history or history.empty:
        return math.nan
    losses = pd.to_numeric(history["val_loss"], errors="coerce")
    if best_epoch is not None and "epoch" in history:
        at = losses[history["epoch"] == best_epoch]
        if len(at) == 1:
            return float(at.iloc[0])
    if monitor == "val_auroc" and "val_auroc" in history:
        auroc = pd.to_numeric(history["val_auroc"], errors="coerce")
        if auroc.notna().any():
            return float(losses[auroc.idxmax()])
    return float(losses.min()) if losses.notna().any() else math.nan


# --------------------------------------------------------------------------- planning
def _task_studies(data_dir: Path, task: str) -> tuple[pd.DataFrame, list[str]]:
    """Labeled training studies of ``task`` (``finetune.study_labels``) and the splits that
    hold labeled videos."""
    from echoclr_cli.data.manifest import load_manifest
    from echoclr_cli.finetune import study_labels

    df = load_manifest(data_dir, task=task, check_files=False)
    present = sorted(df["split"].unique())
    train = df[df["split"] == "train"]
    if train.empty:
        raise UserError(
            f"{data_dir}/manifest.csv: no training study with a '{task}' label",
            fix=f"check the '{task}' column or drop the task from sweep.tasks",
        )
    if "val" not in present:
        raise UserError(
            f"{data_dir}/manifest.csv: no val split with a '{task}' label; the sweep "
            "selects models on it",
            fix="re-run `echoclr preprocess` with a val split",
        )
    return study_labels(train, task), present


def subset_size(studies: pd.DataFrame, ratio: float, seed: int, task: str) -> int:
    """Labeled training studies a fine-tune run at ``ratio`` / ``frac_seed`` uses: the paper's
    ``int(ratio * N)``, extended (FAULTS.md 17) to hold both classes, exactly as
    ``finetune.sample_label_fraction`` draws them."""
    from echoclr_cli.finetune import sample_label_fraction

    return len(sample_label_fraction(studies, ratio, seed, task).studies)


def run_seconds(run_dir: Path, history: pd.DataFrame | None) -> tuple[float, float]:
    """``(training seconds, evaluation seconds)`` of a finished run: the history's epoch
    seconds, and the time from the last history.csv write to metrics.json (final evaluation)."""
    run_dir = Path(run_dir)
    train = (
        float(pd.to_numeric(history["seconds"], errors="coerce").sum())
        if (history is not None and "seconds" in history)
        else math.nan
    )
    try:
        evaluation = max(
            0.0,
            (run_dir / "metrics.json").stat().st_mtime - (run_dir / "history.csv").stat().st_mtime,
        )
    except OSError:
        evaluation = 0.0
    return train, evaluation


@dataclass(frozen=True)
class CostModel:
    """``seconds = eval_seconds + seconds_per_study_epoch x labeled studies x epochs``."""

    seconds_per_study_epoch: float
    eval_seconds: float
    source: str  # history | default

    @classmethod
    def fit(cls, done: Sequence[tuple[int, int, float, float]], device: str) -> CostModel:
        """From finished runs ``(n_studies, epochs_run, train_s, eval_s)``, else rough defaults."""
        ok = [d for d in done if d[1] > 0 and math.isfinite(d[2])]
        units = sum(n * e for n, e, _, _ in ok)
        if units > 0:
            return cls(
                sum(t for _, _, t, _ in ok) / units, float(np.mean([v for *_, v in ok])), "history"
            )
        from echoclr_cli.config import cuda_available

        kind = (
            "cuda"
            if device.startswith("cuda") or (device == "auto" and cuda_available())
            else "cpu"
        )
        return cls(DEFAULT_SECONDS_PER_STUDY_EPOCH[kind], DEFAULT_EVAL_SECONDS[kind], "default")

    def estimate(self, n_studies: int, epochs: int) -> float:
        return self.eval_seconds + self.seconds_per_study_epoch * n_studies * epochs


def plan_sweep(cfg: Config, data_dir: Path, out_dir: Path) -> SweepPlan:
    """The full grid, sorted (task, init, ratio, lr, seed), with each run's status and cost.

    Reads the manifest (no video), the pretrain dir and the sweep dir; writes nothing.
    Raises UserError for an empty or bad grid, a missing task label, and unavailable named
    inits (with the `echoclr pretrain` command to run).
    """
    _check_grid(cfg)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    sw = cfg.sweep
    tasks = list(dict.fromkeys(sw.tasks))
    studies: dict[str, pd.DataFrame] = {}
    present: set[str] = set()
    for task in tasks:
        studies[task], splits_here = _task_studies(data_dir, task)
        present.update(splits_here)
    n_cache: dict[tuple[str, float, int], int] = {}

    def n_studies(task: str, ratio: float, seed: int) -> int:
        key = (task, ratio, seed)
        if key not in n_cache:
            n_cache[key] = subset_size(studies[task], ratio, seed, task)
        return n_cache[key]

    splits = [s for s in dict.fromkeys(sw.splits) if s in present]
    split_notes = [
        f"split '{s}' not in the data: not evaluated" for s in sw.splits if s not in present
    ]
    if not splits:
        raise UserError(
            f"none of sweep.splits {sw.splits} is in {data_dir}/manifest.csv",
            fix="set sweep.splits to splits the manifest has (test, ext_test)",
        )
    inits, notes, to_pretrain = resolve_inits(cfg, data_dir)

    specs = []
    for task in tasks:
        for init, source in inits:
            for ratio in sorted(set(float(r) for r in sw.ratios)):
                for lr in lr_grid(cfg, ratio):
                    for seed in sorted(set(sw.seeds)):
                        specs.append((task, init, source, ratio, lr, seed))

    states = [run_status(out_dir / run_dir_name(t, i, r, lr, s)) for t, i, _, r, lr, s in specs]
    history: dict[tuple, pd.DataFrame | None] = {}
    spent: dict[tuple, tuple[float, float]] = {}
    for (t, i, _, r, lr, s), st in zip(specs, states, strict=True):
        if st == "pending":
            continue
        run_dir = out_dir / run_dir_name(t, i, r, lr, s)
        history[(t, i, r, lr, s)] = hist = read_history(run_dir)
        if st == "done":
            spent[(t, i, r, lr, s)] = run_seconds(run_dir, hist)
    cost = CostModel.fit(
        [
            (n_studies(k[0], k[2], k[4]), len(history[k]) if history[k] is not None else 0, *v)
            for k, v in spent.items()
        ],
        cfg.runtime.device,
    )

    runs = []
    for index, ((task, init, src, ratio, lr, seed), status) in enumerate(
        zip(specs, states, strict=True)
    ):
        n = n_studies(task, ratio, seed)
        key = (task, init, ratio, lr, seed)
        if key in spent and math.isfinite(spent[key][0]):
            est = spent[key][0] + spent[key][1]
        else:
            hist = history.get(key)
            epochs_left = cfg.finetune.epochs - (len(hist) if hist is not None else 0)
            est = cost.estimate(n, max(epochs_left, 0))
        overrides = {
            "finetune": {
                "task": task,
                "init": src,
                "frac": ratio,
                "frac_seed": seed,
                "optim": {"learning_rate": lr},
            },
            "runtime": {"seed": seed},
            "evaluate": {"splits": list(dict.fromkeys(sw.splits))},
        }
        runs.append(
            RunSpec(
                index,
                task,
                init,
                src,
                ratio,
                lr,
                seed,
                n,
                run_dir_name(task, init, ratio, lr, seed),
                status,
                est,
                overrides,
            )
        )
    return SweepPlan(
        runs, [i for i, _ in inits], notes, to_pretrain, tasks, splits, split_notes, cost.source
    )


def run_config(cfg: Config, spec: RunSpec, data_dir: Path) -> Config:
    """The sweep's resolved config with the run's overrides (and ``paths.data``) applied."""
    data = deep_merge(config_to_dict(cfg), spec.overrides)
    data["paths"]["data"] = str(Path(data_dir))
    # Per-run ROC/PR/calibration figures only when asked (sweep.run_plots); the sweep's own
    # label-efficiency figure follows evaluate.plots.
    data["evaluate"]["plots"] = bool(cfg.evaluate.plots and cfg.sweep.run_plots)
    return Config.model_validate(data)


def shard_runs(runs: Sequence[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Runs of shard ``(i, n)``: index modulo n over the full sorted plan (done or not)."""
    if shard is None:
        return list(runs)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"shard {i}/{n} is not i/n with 0 <= i < n", fix="use e.g. --shard 0/4")
    return [r for r in runs if r.index % n == i]


# --------------------------------------------------------------------------- sweep dir
def check_sweep_config(cfg: Config, out_dir: Path) -> None:
    """Refuse when ``out_dir/sweep.yaml`` was written with a config that shapes runs differently
    (finished runs would not be comparable). Grid, paths and worker counts may change."""
    path = Path(out_dir) / "sweep.yaml"
    if not path.exists():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    changed = [k for k in diff_configs(old, config_to_dict(cfg)) if not k.startswith(SWEEP_MUTABLE)]
    if changed:
        raise UserError(
            f"sweep dir {out_dir} holds runs made with another config (changed: {', '.join(changed)})",
            fix=f"re-run with the config in {path} (only the grid may change), or use another --out",
        )


def _write_sweep_files(cfg: Config, plan: SweepPlan, out_dir: Path) -> None:
    atomic_write_text(out_dir / "sweep.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    atomic_write_csv(out_dir / "plan.csv", plan.frame())


def _emit(progress: Progress | None, text: str, **extra: Any) -> None:
    if progress is not None:
        progress({"kind": "message", "text": text, **extra})


def _run_progress(progress: Progress | None, run_dir: str) -> Progress | None:
    if progress is None:
        return None
    return lambda event: progress({**event, "run": run_dir})


def _pretrain_missing(
    cfg: Config,
    plan: SweepPlan,
    data_dir: Path,
    progress: Progress | None,
    pretrain_fn: PretrainFn | None,
) -> list[str]:
    if pretrain_fn is None:
        from echoclr_cli.pretrain import run_pretrain as pretrain_fn
    done = []
    for spec in plan.pretrain:
        _emit(progress, f"pretraining {spec.method} -> {spec.run_dir} ({spec.status})")
        mcfg = cfg.model_copy(deep=True)
        mcfg.pretrain.method = spec.method
        pretrain_fn(
            mcfg,
            data_dir,
            spec.run_dir,
            resume=spec.status == "partial",
            progress=_run_progress(progress, str(spec.run_dir)),
        )
        done.append(str(spec.run_dir))
    return done


def preflight_sweep(cfg: Config, data_dir: Path, plan: SweepPlan) -> None:
    """The preflight of ``echoclr check`` for every task of the grid (and for pretraining when
    the sweep pretrains missing inits), before anything is written, built or trained: missing
    files, leakage, one-class or empty training splits refuse the whole sweep at once."""
    from echoclr_cli.check import run_check

    for task in plan.tasks:
        tcfg = cfg.model_copy(deep=True)
        tcfg.finetune.task = task
        run_check(tcfg, data_dir, task=task, section="finetune").raise_if_failed()
    for spec in plan.pretrain:
        pcfg = cfg.model_copy(deep=True)
        pcfg.pretrain.method = spec.method
        run_check(pcfg, data_dir, section="pretrain").raise_if_failed()


def run_sweep(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    shard: tuple[int, int] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    finetune_fn: FinetuneFn | None = None,
    pretrain_fn: PretrainFn | None = None,
) -> SweepResult:
    """Plan, (pretrain missing SSL inits,) fine-tune every unfinished run of this shard, aggregate.

    ``dry_run``: plan only, nothing is written or trained. A run that raises UserError (e.g. a
    label fraction with no positive study) is recorded in ``failed`` and the sweep goes on; any
    other exception (preemption, Ctrl-C, a bug) stops the sweep, and re-running it resumes.
    ``finetune_fn`` / ``pretrain_fn`` default to ``finetune.run_finetune`` / ``pretrain.run_pretrain``
    (tests inject fakes with the same signature).
    """
    from echoclr_cli.engine import dist_env

    if dist_env()[1] > 1:
        raise UserError(
            "echoclr sweep runs one process per shard, not under torchrun (WORLD_SIZE > 1)",
            fix="start one `echoclr sweep --shard i/n` per GPU (docs/SLURM.md)",
        )
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    plan = plan_sweep(cfg, data_dir, out_dir)
    mine = shard_runs(plan.runs, shard)
    result = SweepResult(plan=plan, shard=shard, assigned=mine, dry_run=dry_run)
    check_sweep_config(cfg, out_dir)
    if dry_run:
        return result
    if plan.pretrain and shard is not None:
        cmds = " && ".join(p.command for p in plan.pretrain)
        raise UserError(
            "--pretrain-missing cannot run inside a sharded sweep (every shard would pretrain)",
            fix=f"pretrain first ({cmds}), then launch the shards",
        )
    preflight_sweep(cfg, data_dir, plan)
    for line in plan.summary(mine):  # what is about to happen, before hours of training
        _emit(progress, line)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_sweep_files(cfg, plan, out_dir)
    result.pretrained = _pretrain_missing(cfg, plan, data_dir, progress, pretrain_fn)

    if finetune_fn is None:
        from echoclr_cli.finetune import run_finetune as finetune_fn
    todo = [r for r in mine if run_status(out_dir / r.run_dir) != "done"]
    for k, spec in enumerate(todo, 1):
        run_dir = out_dir / spec.run_dir
        status = run_status(run_dir)
        if status == "done":  # another process finished it meanwhile
            continue
        resume = status == "partial"
        (run_dir / ERROR_FILE).unlink(missing_ok=True)  # a failure of an earlier try
        overwrite = not resume and run_dir.exists() and any(run_dir.iterdir())
        verb = "resuming" if resume else "training"
        _emit(
            progress,
            f"[{k}/{len(todo)}] {verb} {spec.run_dir}",
            run=spec.run_dir,
            index=k,
            total=len(todo),
            status=verb,
        )
        try:
            finetune_fn(
                run_config(cfg, spec, data_dir),
                data_dir,
                run_dir,
                resume=resume,
                overwrite=overwrite,
                progress=_run_progress(progress, spec.run_dir),
            )
        except UserError as e:
            result.failed.append((spec.run_dir, str(e)))
            atomic_write_text(run_dir / ERROR_FILE, str(e) + "\n")
            _emit(
                progress,
                f"[{k}/{len(todo)}] FAILED {spec.run_dir}: {e}",
                run=spec.run_dir,
                index=k,
                total=len(todo),
                status="failed",
            )
            continue
        result.trained.append(spec.run_dir)

    agg = _aggregate(out_dir, cfg, plan_frame=plan.frame(), inits=plan.inits)
    result.results, result.selection, result.tables, result.figures = agg
    return result


# --------------------------------------------------------------------------- aggregation
def _selection_key(
    cand: tuple[float, str, float, float], by_metric: str
) -> tuple[float, float, float]:
    """Sort key of a candidate ``(lr, run_dir, val_auroc, val_loss)``: smaller is better."""
    lr, _, auroc, loss = cand
    loss = loss if math.isfinite(loss) else math.inf
    return (loss, -auroc, lr) if by_metric == "val_loss" else (-auroc, loss, lr)


def select_models(plan_df: pd.DataFrame, out_dir: Path, cfg: Config) -> pd.DataFrame:
    """One row per (task, init, ratio, seed): the selected LR run and why (``SELECTION_COLUMNS``).

    ``run_dir``/``lr`` are empty when nothing can be selected yet (``reason`` says why: runs
    not finished, or every val split one-class).
    """
    rows = []
    by_metric = cfg.sweep.select_metric
    monitor = cfg.finetune.monitor
    for (task, init, ratio, seed), g in plan_df.groupby(
        ["task", "init", "ratio", "seed"], sort=False
    ):
        cands = []
        for r in g.itertuples():
            metrics = read_metrics(out_dir / r.run_dir)
            if metrics is None:
                continue
            auroc = _val_auroc(metrics)
            loss = _val_loss(
                read_history(out_dir / r.run_dir), monitor, _best_epoch(out_dir / r.run_dir)
            )
            cands.append((float(r.lr), r.run_dir, auroc, loss))
        row = {
            "task": task,
            "init": init,
            "ratio": float(ratio),
            "n_studies": int(g["n_studies"].iloc[0]),
            "seed": int(seed),
            "lr": math.nan,
            "run_dir": "",
            "val_auroc": math.nan,
            "val_loss": math.nan,
            "candidates": len(g),
            "finished": len(cands),
            "reason": "",
        }
        valid = [c for c in cands if math.isfinite(c[2])]
        if len(cands) < len(g):
            row["reason"] = f"waiting for {len(g) - len(cands)} of {len(g)} runs"
            errors = [
                (out_dir / d / ERROR_FILE).read_text().strip()
                for d in g["run_dir"]
                if (out_dir / d / ERROR_FILE).is_file() and read_metrics(out_dir / d) is None
            ]
            if errors:
                row["reason"] += f" ({len(errors)} failed: {errors[0]})"
        elif not valid:
            row["reason"] = "no run with a defined val AUROC (one-class val split)"
        else:
            lr, run_dir, auroc, loss = min(valid, key=lambda c: _selection_key(c, by_metric))
            skipped = len(cands) - len(valid)
            row.update(
                lr=lr,
                run_dir=run_dir,
                val_auroc=auroc,
                val_loss=loss,
                reason=f"best {by_metric} of {len(valid)}"
                + (f" ({skipped} one-class val run(s) excluded)" if skipped else ""),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def collect_results(selection: pd.DataFrame, out_dir: Path, splits: Sequence[str]) -> pd.DataFrame:
    """Long results table of the selected runs on ``splits`` (``RESULTS_COLUMNS``)."""
    from echoclr_cli.metrics import metrics_to_frame

    frames = []
    for row in selection[selection["run_dir"] != ""].itertuples():
        metrics = read_metrics(out_dir / row.run_dir)
        if metrics is None:
            continue
        long = metrics_to_frame({s: metrics[s] for s in splits if isinstance(metrics.get(s), dict)})
        for col in ("task", "init", "ratio", "n_studies", "seed", "lr"):
            long[col] = getattr(row, col)
        frames.append(long)
    if not frames:
        return pd.DataFrame(columns=RESULTS_COLUMNS)
    df = pd.concat(frames, ignore_index=True)[RESULTS_COLUMNS]
    for col in ("value", "ci_low", "ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _sort_results(df: pd.DataFrame, inits: Sequence[str]) -> pd.DataFrame:
    rank = {n: i for i, n in enumerate(inits)}
    key = df["init"].map(lambda x: rank.get(x, len(rank)))
    return (
        df.assign(_rank=key)
        .sort_values(
            ["task", "_rank", "init", "ratio", "seed", "split", "level", "metric"], kind="stable"
        )
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def _fmt(x: float) -> str:
    return f"{x:.3f}" if x is not None and math.isfinite(x) else "-"


def results_table(
    results: pd.DataFrame,
    task: str,
    split: str,
    metric: str = "auroc",
    level: str = "study",
    inits: Sequence[str] | None = None,
) -> SweepTable:
    """Paper-style table (rows init, columns ratio with n studies) of one task/split/metric.

    Rows are every init and columns every ratio with a selected run for the task and split; a
    cell whose value is undefined (one-class test split) or missing reads ``"-"``.
    """
    long = label_efficiency_table(results, task, split, level, metric)
    rows = results[(results["task"] == task) & (results["split"] == split)]
    present = set(rows["init"])
    order = [i for i in (inits or sorted(present)) if i in present]
    ratios = sorted(float(r) for r in rows["ratio"].unique())
    cols = {
        r: f"{100 * r:g}% (n={int(round(rows.loc[rows['ratio'] == r, 'n_studies'].mean()))})"
        for r in ratios
    }

    def pivot(name: str) -> pd.DataFrame:
        p = pd.DataFrame(np.nan, index=pd.Index(order, name="init"), columns=ratios)
        if not long.empty:
            p = long.pivot(index="init", columns="ratio", values=name).reindex(
                index=order, columns=ratios
            )
        p.columns = [cols[r] for r in ratios]
        p.index.name = "init"
        return p.astype(float)

    values, low, high, n_seeds = pivot("value"), pivot("low"), pivot("high"), pivot("n_seeds")
    best = pd.DataFrame(False, index=values.index, columns=values.columns)
    for c in values.columns:
        col = values[c]
        if col.notna().any():
            best[c] = np.isclose(col, col.max(), rtol=0, atol=1e-12) & col.notna()
    text = pd.DataFrame("", index=values.index, columns=values.columns, dtype=object)
    for i in values.index:
        for c in values.columns:
            v, lo, hi, k = values.at[i, c], low.at[i, c], high.at[i, c], n_seeds.at[i, c]
            if not math.isfinite(v):
                cell = "-"
            elif k > 1:
                cell = f"{_fmt(v)} ± {_fmt(v - lo)} (n={int(k)})"
            elif math.isfinite(lo) and math.isfinite(hi):
                cell = f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"
            else:
                cell = _fmt(v)
            text.at[i, c] = cell + (" *" if best.at[i, c] else "")
    return SweepTable(task, split, level, metric, values, low, high, n_seeds, text, best)


def _aggregate(
    out_dir: Path,
    cfg: Config,
    plan_frame: pd.DataFrame | None = None,
    inits: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, SweepTable], list[Path]]:
    out_dir = Path(out_dir)
    if plan_frame is None:
        path = out_dir / "plan.csv"
        if not path.exists():
            raise UserError(f"no plan.csv in {out_dir}", fix="run `echoclr sweep --out DIR` first")
        plan_frame = pd.read_csv(path)
    if inits is None:
        rank = {n: i for i, n in enumerate(INIT_ORDER)}
        inits = sorted(plan_frame["init"].unique(), key=lambda x: (rank.get(x, len(rank)), x))
    splits = [s for s in dict.fromkeys(cfg.sweep.splits)]
    selection = select_models(plan_frame, out_dir, cfg)
    results = _sort_results(collect_results(selection, out_dir, splits), inits)
    atomic_write_csv(out_dir / "selection.csv", selection)
    atomic_write_csv(out_dir / "results.csv", results)
    tables: dict[str, SweepTable] = {}
    figures: list[Path] = []
    present = set(results["split"]) if not results.empty else set()
    for task in dict.fromkeys(plan_frame["task"]):
        for split in splits:
            if split not in present:
                continue
            for metric in TABLE_METRICS:
                t = results_table(results, task, split, metric, SELECT_LEVEL, inits)
                tables[t.key] = t
                atomic_write_csv(out_dir / f"table_{t.key}.csv", t.text.reset_index())
            if not cfg.evaluate.plots:
                continue
            figures.append(
                plot_label_efficiency(
                    results,
                    out_dir / f"label_efficiency_{task}_{split}.png",
                    task,
                    split,
                    level=SELECT_LEVEL,
                    metric="auroc",
                    inits=inits,
                )
            )
    return results, selection, tables, figures


def aggregate(out_dir: Path, cfg: Config) -> tuple[pd.DataFrame, dict[str, SweepTable]]:
    """Select models and tabulate whatever is finished in ``out_dir`` (reads its plan.csv).

    Writes selection.csv, results.csv, table_*.csv and label_efficiency_*.png; returns
    ``(results, tables)`` with tables keyed ``"{metric}_{task}_{split}"``.
    """
    results, _, tables, _ = _aggregate(out_dir, cfg)
    return results, tables
