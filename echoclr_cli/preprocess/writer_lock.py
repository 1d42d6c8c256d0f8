"""One writer per dataset folder (FAULTS.md 42): ``DATA/.lock`` is held with an exclusive
``flock`` for a whole preprocess and holds the writer's pid; a second preprocess into the same
folder refuses in one line naming that pid. The lock is released by the kernel when the process
ends (kill -9 included), so a stale file never blocks; the file stays (removing it would let two
writers lock two different files) unless the run created the folder and wrote nothing else."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from echoclr_cli.errors import UserError
from echoclr_cli.io import output_error

LOCK_NAME = ".lock"


def _created_dirs(out: Path) -> list[Path]:
    """The folders ``out.mkdir(parents=True)`` would create, innermost first."""
    made = []
    p = out
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    return made


@contextlib.contextmanager
def dataset_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the duration; refuse when another process holds it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        yield  # the caller refuses this output ("exists and is not a directory")
        return
    made = _created_dirs(out)
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise output_error(path if out.is_dir() else out, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UserError(
            f"{out} is being written by another preprocess (pid {holder or 'unknown'}); "
            "nothing was written",
            fix="wait for that run to finish, or choose another --output",
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):  # nothing but the lock: leave no dataset behind
            if made and [p.name for p in out.iterdir()] == [LOCK_NAME]:
                path.unlink()
                for d in made:
                    d.rmdir()
        os.close(fd)
