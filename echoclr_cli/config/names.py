"""Names that become folders, columns and labels: task names, label names (the one rule).

A task or label name is ``[A-Za-z0-9_.-]+`` and not ``.`` or ``..``: it can name a run
folder (``runs/finetune/<task>-...``), a manifest column and a command-line value without
leaving ``runs/``, breaking a CSV or carrying markup. A label *column* of a user's table may be
free text: :func:`task_name` gives the valid name it is stored under.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from echoclr_cli.errors import UserError

NAME_RULE = "[A-Za-z0-9_.-]+ (letters, digits, '_', '.', '-'; not '.' or '..')"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_OTHER = re.compile(r"[^A-Za-z0-9_.-]+")


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid name (None when it is)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        return f"{value!r} is not a valid name: it must match {NAME_RULE}"
    return None


def _valid(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A config field holding a task or label name (finetune.task, sweep.tasks, label_map keys).
Name = Annotated[str, AfterValidator(_valid)]


def check_name(value: object, what: str, fix: str | None = None) -> str:
    """``value`` when it is a valid name, else a one-line UserError naming ``what``, the value
    and the rule."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what} {problem}", fix=fix or f"rename it to match {NAME_RULE}")
    return str(value)


def task_name(column: str) -> str | None:
    """A label column's text -> the valid name it is stored under (each run of other characters
    becomes ``_``; leading/trailing ``_ . -`` dropped), or None when nothing is left."""
    name = _OTHER.sub("_", str(column)).strip("_.-")
    return name if name and name_problem(name) is None else None
