"""User-facing errors: one line naming the problem and the fix, exit code 1 (or `code`)."""

from __future__ import annotations

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
