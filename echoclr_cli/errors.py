"""User-facing errors: one line naming the problem and the fix, exit code 1 (or `code`)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, data, paths). Printed without a traceback."""

    def __init__(self, message: str, fix: str | None = None, code: int = 1):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code

    def __str__(self) -> str:
        return self.message + (f" -> {self.fix}" if self.fix else "")


class Preempted(Exception):
    """Raised inside the training loop after SIGTERM, once a checkpoint is safely written."""

    code = 143
