"""User-facing errors: one line naming the problem and the fix, exit code 1 (or `code`); the
one way to import an optional extra (``require_extra``); the training interrupts."""

from __future__ import annotations

import importlib
from types import ModuleType

# A UserError raised inside a DataLoader worker reaches the main process rebuilt by
# torch (``torch._utils.ExceptionWrapper.reraise``) as ``UserError(text)`` where ``text`` is
# "Caught UserError in DataLoader worker process N.\nOriginal Traceback ...\n<type>: <str(e)>".
_WORKER_PREFIX = "Caught UserError "
_TYPE_LINE = "echoclr_cli.errors.UserError: "


class UserError(Exception):
    """A problem with the user's input (config, data, paths). Printed without a traceback.

    Raised in a DataLoader worker (e.g. a corrupt video file), it arrives in the main process
    wrapped in the worker's traceback; the constructor recovers the original one-line message
    and fix from it, so the CLI still prints one line naming the file (FAULTS.md 25).
    """

    def __init__(self, message: str, fix: str | None = None, code: int = 1):
        if fix is None:
            message, fix = _unwrap_worker_message(message)
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code

    def __str__(self) -> str:
        return self.message + (f" -> {self.fix}" if self.fix else "")

    def __reduce__(self):
        # Pickled across processes (preprocess workers) with its fix and exit code.
        return (type(self), (self.message, self.fix, self.code))


def _unwrap_worker_message(text: str) -> tuple[str, str | None]:
    """(message, fix) of a UserError re-raised from a DataLoader worker; else (text, None)."""
    if not text.startswith(_WORKER_PREFIX) or _TYPE_LINE not in text:
        return text, None
    where = text[len(_WORKER_PREFIX) :].split("\n", 1)[0].rstrip(".")  # in DataLoader worker ...
    original = text.rsplit(_TYPE_LINE, 1)[1].strip()
    message, sep, fix = original.rpartition(" -> ")
    if not sep:
        message, fix = original, ""
    return f"{message} ({where})", fix or None


class Preempted(Exception):
    """Raised inside the training loop after SIGTERM, once a checkpoint is safely written."""

    code = 143


class Interrupted(Preempted):
    """Raised inside the training loop after Ctrl-C (SIGINT), once a checkpoint is safely
    written; the message is the one line the CLI prints."""

    code = 130


# --------------------------------------------------------------------------- optional extras
# Import name of each optional package -> (pip name, extra of pyproject.toml that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "captum": ("captum", "explain"),
    "onnx": ("onnx", "explain"),
    "onnxruntime": ("onnxruntime", "explain"),
    "tensorboard": ("tensorboard", "explain"),
    "umap": ("umap-learn", "umap"),
    "submitit": ("submitit", "cluster"),
}


def extra_hint(package: str) -> str:
    """``pip install 'echoclr[<extra>]' (or: pip install <pip name>)`` for an import name."""
    pip_name, extra = EXTRAS[package]
    return f"pip install 'echoclr[{extra}]' (or: pip install {pip_name})"


def require_extra(
    module: str, needed_for: str, *, package: str | None = None, alternative: str | None = None
) -> ModuleType:
    """``module`` imported, or a one-line UserError naming what to install (and ``alternative``).

    ``package`` is the import name of the optional package when it differs from the top of
    ``module`` (``torch.utils.tensorboard`` needs ``tensorboard``); it is imported first, so a
    missing package is found even when ``module`` was imported before.
    """
    package = package or module.split(".")[0]
    try:
        __import__(package)  # the builtin import hook, so tests can hide a package
        return importlib.import_module(module)
    except ImportError:
        pip_name = EXTRAS[package][0]
        fix = extra_hint(package) + (f", or {alternative}" if alternative else "")
        raise UserError(f"{needed_for} needs {pip_name}, which is not installed", fix=fix) from None


def find_extra(module: str) -> ModuleType | None:
    """``module`` imported when its optional package is installed, else None (no error)."""
    try:
        __import__(module.split(".")[0])
        return importlib.import_module(module)
    except ImportError:
        return None
