"""Terminal output with rich: tables, progress bars, one-line errors.

Core modules never print; they return plain data or call a ``progress(event)`` callback. This
module turns those into terminal output, so core code stays testable without a terminal.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from echoclr_cli import events
from echoclr_cli.pretrain.methods import METHODS


def _console(stderr: bool) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:  # logs and pipes: do not squeeze tables of CIs into 80 columns
        c = Console(stderr=stderr, highlight=False, width=160)
    return c


console = _console(stderr=False)
err_console = _console(stderr=True)

QUIET = False


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet


# Every text given to these functions is plain text: user text (paths, task and label names,
# column names) is escaped before rich reads markup, so ``[/x]`` prints as itself. Only this
# module writes markup, around escaped text.
def info(msg: str) -> None:
    if not QUIET:
        console.print(escape(str(msg)))


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(msg))}")


def error(msg: str, fix: str | None = None) -> None:
    # escaped: messages carry user text and install hints (pip install 'echoclr[explain]')
    line = f"[bold red]error:[/bold red] {escape(msg)}"
    if fix:
        line += f"\n  [bold]fix:[/bold] {escape(fix)}"
    err_console.print(line, soft_wrap=True)


def print_config(cfg_dict: dict) -> None:
    console.rule("resolved config")
    console.print(escape(yaml.safe_dump(cfg_dict, sort_keys=False).rstrip()))
    console.rule()


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return str(v)


def fmt_ci(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return fmt(value, digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table of plain text (title, headers and cells escaped)."""
    t = Table(title=escape(str(title)), title_justify="left")
    for c in columns:
        t.add_column(escape(str(c)), justify="right" if c not in (columns[0],) else "left")
    for r in rows:
        t.add_row(*[escape(x if isinstance(x, str) else fmt(x)) for x in r])
    return t


def show(renderable: Any) -> None:
    if not QUIET:
        console.print(renderable)


# --------------------------------------------------------------------------- settings line
def settings_line(
    cfg: Any, section: str, requested_profile: str | None = None, frames_from: str | None = None
) -> str:
    """The first line of every command: the profile and the settings that shape data and model.

    ``section`` is the command's config section (synth, preprocess, pretrain, finetune,
    evaluate, sweep, check, demo); ``requested_profile`` = ``--profile`` (``auto`` says what it
    resolved to and why); ``frames_from`` = where the frame size came from when not from the
    profile (``dataset``, ``run``, ``paper, user archive``).
    """
    profile = cfg.profile
    if requested_profile == "auto":
        profile += " (auto: CUDA)" if cfg.profile == "paper" else " (auto: CPU)"
    parts = [f"profile {profile}"]
    size = cfg.preprocess.size
    if section == "synth":
        sy = cfg.synth
        parts += [f"{sy.studies} studies", f"raw frames {sy.height}x{sy.width}", sy.format]
    else:
        parts.append(f"frames {size}x{size}" + (f" ({frames_from})" if frames_from else ""))
    pt, ft = cfg.pretrain, cfg.finetune
    if section == "pretrain":
        parts += [f"method {pt.method}", f"clip {pt.clip_len}", f"width {cfg.model.width:g}",
                  f"batch {pt.batch_size}"]  # fmt: skip
    elif section == "demo":
        parts += [f"width {cfg.model.width:g}", f"pretrain clip {pt.clip_len} batch "
                  f"{pt.batch_size}", f"finetune clip {ft.clip_len} batch {ft.batch_size}"]  # fmt: skip
    elif section == "evaluate":
        parts += [f"clip {ft.clip_len}", f"width {cfg.model.width:g}",
                  f"batch {cfg.evaluate.batch_size} videos"]  # fmt: skip
    elif section in ("finetune", "sweep", "check"):
        parts += [f"clip {ft.clip_len}", f"width {cfg.model.width:g}", f"batch {ft.batch_size}"]
    published = {"resize": type(cfg.preprocess)().resize, "head": type(pt)().reorder_head}
    if section in ("preprocess", "demo") and cfg.preprocess.resize != published["resize"]:
        parts.append(f"resize {cfg.preprocess.resize} (paper: {published['resize']})")
    reorders = section == "demo" or (section == "pretrain" and METHODS[pt.method].reorder)
    if reorders and pt.reorder_head != published["head"]:  # not the published head
        parts.append(f"EchoCLR order head {pt.reorder_head} (paper: {published['head']})")
    if section not in ("synth", "preprocess", "check"):
        parts.append(f"device {cfg.runtime.device}")
    return " | ".join(parts)


def show_settings(
    cfg: Any, section: str, requested_profile: str | None = None, frames_from: str | None = None
) -> None:
    info(settings_line(cfg, section, requested_profile, frames_from))


# --------------------------------------------------------------------------- progress
def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=QUIET or not sys.stdout.isatty(),
    )


class Renderer:
    """The one reader of ``events``: a progress bar plus lines, for every event type.

    ``description`` names the command (``pretrain echoclr``, ``sweep``). Events of a sweep run
    (``run`` set) update the bar; their epoch summaries are not printed line by line (a sweep
    has hundreds of epochs), its run starts, failures and time estimates are. An object that is
    not an event raises TypeError: nothing is dropped silently.
    """

    def __init__(self, description: str, out: Console, bar: Progress | None = None):
        self.description = description
        self.out = out
        self.bar = bar
        self.task = (
            bar.add_task(escape(description), total=None, info="") if bar is not None else None
        )
        self.bar_visible = bar is not None and not bar.disable

    def _line(self, text: str, markup: str = "") -> None:
        """Print ``text`` (plain, escaped) after ``markup`` (this module's own)."""
        if not QUIET:
            self.out.print(markup + escape(str(text)), soft_wrap=True)

    def _bar(self, **fields: Any) -> None:
        if self.bar is not None:  # the bar's columns read markup: descriptions are plain text
            fields = {k: escape(v) if isinstance(v, str) else v for k, v in fields.items()}
            self.bar.update(self.task, **fields)

    def _where(self, run: str | None) -> str:
        return f"{self.description} {run}" if run else self.description

    def _count(
        self, run: str | None, what: str, done: int, total: int | None, info: str = ""
    ) -> None:
        """The bar at ``done`` of ``total`` (a batch, a file), described as ``<command> <what>``."""
        self._bar(description=f"{self._where(run)} {what}", completed=done, total=total, info=info)

    def __call__(self, event: events.Event) -> None:
        e = event
        if isinstance(e, events.Step):
            self._count(
                e.run, f"epoch {e.epoch}/{e.epochs}", e.batch, e.batches, f"loss {e.loss:.4f}"
            )
        elif isinstance(e, events.Epoch):
            summary = epoch_summary(e.row)
            if e.run:
                self._bar(info=summary)
            else:
                self._line(f"epoch {e.row.get('epoch', e.epoch)}/{e.epochs}: {summary}")
        elif isinstance(e, events.EvalBatch):
            self._count(e.run, "evaluating", e.batch, e.batches)
        elif isinstance(e, events.Count):
            self._count(e.run, e.stage, e.done, e.total)
            if not self.bar_visible and e.total and e.done == e.total:  # logs: one line
                self._line(f"{e.stage}: {e.done}/{e.total} done")
        elif isinstance(e, events.Status):
            self._bar(description=f"{self._where(e.run)}: {e.text}")
            if not e.run:
                self._line(e.text)
        elif isinstance(e, events.Note):
            self._line(f"{e.run}: {e.text}" if e.run else e.text)
        elif isinstance(e, events.RunStart):
            verb = "resuming" if e.resume else "training"
            self._line(f"[{e.index}/{e.total}] {verb} {e.run}")
        elif isinstance(e, events.RunFailed):
            self._line(
                f"{e.run}: {e.error}", escape(f"[{e.index}/{e.total}] ") + "[red]FAILED[/red] "
            )
        elif isinstance(e, events.Eta):
            from echoclr_cli.events import fmt_duration

            self._line(
                f"estimated time left {fmt_duration(e.seconds)} for {e.runs_left} run(s) "
                f"({e.basis})"
            )
        else:
            raise TypeError(f"not a progress event: {event!r} (see echoclr_cli/events.py)")


def epoch_summary(row: dict) -> str:
    """``loss 0.6931  val_auroc 0.5000 ...`` of a history row (epoch, step, seconds left out)."""
    keys = [k for k in row if k not in ("epoch", "step", "seconds")]
    return "  ".join(f"{k} {fmt(row[k], 4)}" for k in keys)


@contextlib.contextmanager
def progress(description: str) -> Iterator[Renderer]:
    """Yield the ``progress(event)`` callback of a command: a bar (on a terminal) plus lines."""
    with _progress() as bar:
        yield Renderer(description, bar.console, bar)


# --------------------------------------------------------------------------- command summaries
def show_preprocess(res: Any) -> None:
    """Summary of a preprocess run: inputs, skipped by reason, splits with prevalence."""
    if QUIET:
        return
    info(
        f"preprocess: {res.n_inputs} input file(s) ({res.layout} layout) -> {res.n_videos} videos "
        f"in {res.output_dir} ({res.n_reused} reused, {res.n_skipped} skipped) in {res.seconds:.1f}s"
    )
    if res.skipped_by_reason:
        rows = [
            [reason, n] for reason, n in sorted(res.skipped_by_reason.items(), key=lambda x: -x[1])
        ]
        show(table("skipped (details in skipped.csv)", ["reason", "files"], rows))
    labels = list(res.label_columns)
    cols = ["split", "videos", "studies", "patients"] + [f"{lab} +/known" for lab in labels]
    rows = []
    for split, sizes in res.split_sizes.items():
        row: list[Any] = [
            split,
            sizes.get("videos", 0),
            sizes.get("studies", 0),
            sizes.get("patients", 0),
        ]
        for lab in labels:
            p = res.prevalence.get(split, {}).get(lab, {})
            rate = p.get("rate")
            rate_s = (
                "n/a"
                if rate is None or (isinstance(rate, float) and math.isnan(rate))
                else f"{rate:.0%}"
            )
            row.append(f"{p.get('positive', 0)}/{p.get('known', 0)} ({rate_s})")
        rows.append(row)
    show(table("splits (by patient)", cols, rows))
    for w in res.warnings:
        warn(w)


# Ranking metrics, then the operating point chosen on validation (Youden) applied to the split.
KEY_METRICS = (
    "auroc", "ap", "aupr_trapz", "balanced_accuracy@youden", "sensitivity@youden",
    "specificity@youden",
)  # fmt: skip


def show_metrics(table_df: Any, title: str) -> None:
    """metrics table (split, level, metric, value, ci_low, ci_high, n) -> one rich table.
    Metrics @youden use the threshold chosen on val (undefined on val itself)."""
    if QUIET:
        return
    df = table_df[table_df["metric"].isin(KEY_METRICS)]
    metrics = [m for m in KEY_METRICS if m in set(df["metric"])]
    units = sorted(set(df["ci_unit"].dropna().astype(str))) if "ci_unit" in df else []
    title += f"; CIs resample: {', '.join(units)}" if units else ""  # the statistical unit
    t = Table(title=escape(title), title_justify="left")
    for c in ["split", "level", "n", *metrics]:
        name = c.replace("balanced_accuracy", "bal_acc")
        t.add_column(name, justify="left" if c in ("split", "level") else "right", no_wrap=True)
    for (split, level), part in df.groupby(["split", "level"], sort=False):
        by = part.set_index("metric")
        n = by["n"].dropna().iloc[0] if by["n"].notna().any() else None
        cells = [
            fmt_ci(_f(by.loc[m, "value"]), _f(by.loc[m, "ci_low"]), _f(by.loc[m, "ci_high"]))
            if m in by.index
            else "n/a"
            for m in metrics
        ]
        t.add_row(
            escape(str(split)), escape(str(level)), fmt(int(n)) if n is not None else "-", *cells
        )
    console.print(t)


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def show_comparison(comparison: dict) -> None:
    """Paired AUROC difference per split and level (from compare.compare_runs)."""
    if QUIET or not comparison:
        return
    t = Table(
        title="paired comparison (this run - compared run, same studies)", title_justify="left"
    )
    for c in (
        "split",
        "level",
        "n",
        "AUROC this",
        "AUROC other",
        "difference [95% CI]",
        "p (bootstrap)",
        "p (DeLong)",
        "unit, test",
    ):
        t.add_column(c, justify="right")
    t.title = escape(
        f"paired comparison: {comparison.get('run_a')} - {comparison.get('run_b')} (same items)"
    )
    for split, levels in comparison["splits"].items():
        for level, c in levels.items():
            boot, dl = c.get("bootstrap") or {}, c.get("delong") or {}
            t.add_row(
                escape(str(split)),
                escape(str(level)),
                fmt(c.get("n")),
                fmt(_f(c.get("auroc_a"))),
                fmt(_f(c.get("auroc_b"))),
                fmt_ci(_f(c.get("diff")), _f(boot.get("ci_low")), _f(boot.get("ci_high"))),
                fmt(_f(boot.get("p_value"))),
                fmt(_f(dl.get("p_value"))),
                escape(f"{boot.get('unit', '-')}, {dl.get('test', 'delong').split(' (')[0]}"),
            )
    console.print(t)


def show_synth(res: Any) -> None:
    info(
        f"wrote {res.n_studies} studies ({res.n_patients} patients, {res.n_cine} cine videos, "
        f"{res.n_files} files) to {res.out_dir}; labels: {res.labels_csv}"
    )


def show_sweep(res: Any) -> None:
    """A sweep's outcome: the plan (dry run), or what was trained, the tables, the figures and
    the failed runs."""
    if res.dry_run:
        for line in res.plan.summary(res.assigned):
            info(line)
        cols = ["run_dir", "status", "est_seconds"]
        show(table("plan", cols, res.plan.frame(res.assigned)[cols].values.tolist()))
        return
    info(f"trained {len(res.trained)} run(s) now; results in {res.out_dir}")
    show_sweep_tables(res.tables)
    for fig in res.figures:
        info(f"figure: {fig}")
    for run_dir, msg in res.failed:
        error(f"{run_dir}: {msg}")


def show_sweep_tables(tables: dict) -> None:
    for tab in tables.values():
        if QUIET:
            return
        several = bool((tab.n_seeds.fillna(0) > 1).to_numpy().any())
        unit = getattr(tab, "ci_unit", "")
        cells = "mean ± sd over n seeds" if several else "value [95% bootstrap CI]"
        cells += f" (CIs resample: {unit})" if unit and not several else ""
        t = Table(
            title=escape(
                f"{tab.metric.upper()} ({tab.level} level), task {tab.task}, split {tab.split}: "
                f"{cells}; * = best per column"
            ),
            title_justify="left",
        )
        t.add_column("init", justify="left")
        for col in tab.text.columns:
            t.add_column(escape(str(col)), justify="right")
        for init, row in tab.text.iterrows():
            cells = []
            for col in tab.text.columns:
                cell = escape(str(row[col]))
                cells.append(
                    f"[bold green]{cell}[/bold green]" if bool(tab.best.loc[init, col]) else cell
                )
            t.add_row(escape(str(init)), *cells)
        console.print(t)


def show_check(res: Any) -> None:
    colour = {"ok": "green", "warn": "yellow", "error": "red"}
    rows = [
        [k, v]
        for k, v in (
            ("videos", res.n_videos),
            ("studies", res.n_studies),
            ("patients", res.n_patients),
        )
    ]
    show(table(f"dataset {res.data_dir}", ["", "count"], rows))
    show(table("splits", list(res.splits.columns), res.splits.values.tolist()))
    for f in res.findings:
        text = f"{f.what}: {f.detail}" + (f"  (fix: {f.fix})" if f.fix and f.level != "ok" else "")
        line = f"[{colour[f.level]}]{f.level:5}[/{colour[f.level]}] {escape(text)}"
        if f.level != "ok":
            err_console.print(line)
        elif not QUIET:
            console.print(line)
