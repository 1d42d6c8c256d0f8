"""Terminal output with rich: tables, progress bars, one-line errors.

Core modules never print; they return plain data or call a ``progress(event)`` callback. This
module turns those into terminal output, so core code stays testable without a terminal.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import yaml
from rich.console import Console
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

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

QUIET = False


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet


def info(msg: str) -> None:
    if not QUIET:
        console.print(msg)


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}")


def error(msg: str, fix: str | None = None) -> None:
    line = f"[bold red]error:[/bold red] {msg}"
    if fix:
        line += f"\n  [bold]fix:[/bold] {fix}"
    err_console.print(line, soft_wrap=True)


def print_config(cfg_dict: dict) -> None:
    console.rule("resolved config")
    console.print(yaml.safe_dump(cfg_dict, sort_keys=False).rstrip())
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
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c not in (columns[0],) else "left")
    for r in rows:
        t.add_row(*[x if isinstance(x, str) else fmt(x) for x in r])
    return t


def show(renderable: Any) -> None:
    if not QUIET:
        console.print(renderable)


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


@contextlib.contextmanager
def count_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)`` for a simple counted job (synth, preprocess)."""
    with _progress() as p:
        task = p.add_task(description, total=None, info="")

        def update(done: int, total: int, info: str = "") -> None:
            p.update(task, completed=done, total=total, info=info)

        yield update


@contextlib.contextmanager
def training_progress(description: str) -> Iterator[Callable[[dict], None]]:
    """Yield the engine's ``progress(event)`` callback: a bar per epoch plus epoch summaries."""
    with _progress() as p:
        task = p.add_task(description, total=None, info="")

        def update(event: dict) -> None:
            if event["kind"] == "step":
                p.update(
                    task,
                    description=f"{description} epoch {event['epoch']}/{event['epochs']}",
                    completed=event["batch"],
                    total=event.get("batches"),
                    info=f"loss {event['loss']:.4f}",
                )
            elif event["kind"] == "epoch":
                row = event["row"]
                keys = [k for k in row if k not in ("epoch", "step", "seconds")]
                summary = "  ".join(f"{k} {fmt(row[k], 4)}" for k in keys)
                if QUIET:
                    return
                p.console.print(f"epoch {row['epoch']}/{event['epochs']}: {summary}")
            elif event["kind"] == "message":
                if not QUIET:
                    p.console.print(event["text"])

        yield update


# --------------------------------------------------------------------------- command summaries
def show_preprocess(res: Any) -> None:
    """Summary of a preprocess run: inputs, skipped by reason, splits with prevalence."""
    if QUIET:
        return
    console.print(
        f"preprocess: {res.n_inputs} input file(s) ({res.layout} layout) -> {res.n_videos} videos "
        f"in {res.output_dir} ({res.n_reused} reused, {res.n_skipped} skipped) in {res.seconds:.1f}s"
    )
    if res.skipped_by_reason:
        rows = [[reason, n] for reason, n in sorted(res.skipped_by_reason.items(), key=lambda x: -x[1])]
        show(table("skipped (details in skipped.csv)", ["reason", "files"], rows))
    labels = list(res.label_columns)
    cols = ["split", "videos", "studies", "patients"] + [f"{lab} +/known" for lab in labels]
    rows = []
    for split, sizes in res.split_sizes.items():
        row: list[Any] = [split, sizes.get("videos", 0), sizes.get("studies", 0), sizes.get("patients", 0)]
        for lab in labels:
            p = res.prevalence.get(split, {}).get(lab, {})
            rate = p.get("rate")
            rate_s = "n/a" if rate is None or (isinstance(rate, float) and math.isnan(rate)) else f"{rate:.0%}"
            row.append(f"{p.get('positive', 0)}/{p.get('known', 0)} ({rate_s})")
        rows.append(row)
    show(table("splits (by patient)", cols, rows))
    for w in res.warnings:
        warn(w)
