"""SIGTERM (preemption) and Ctrl-C during training: a flag the loop checks after each step, the
error it raises once last.pt is written, and a second Ctrl-C that stops at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from echoclr_cli.errors import Interrupted, Preempted
from echoclr_cli.models.checkpoint import TrainState


class StopSignals:
    """What the engine's loop needs to stop cleanly: ``signal`` (the flagged signal, None while
    training goes on), ``saving`` (a checkpoint write is in progress: a second Ctrl-C waits for
    it) and ``saved_at`` ((epoch, step) of the last last.pt)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.saving = False
        self.saved_at: tuple[int, int] | None = None

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        """SIGTERM (preemption) and the first Ctrl-C only set a flag: the loop finishes the step,
        writes last.pt and stops. A second Ctrl-C stops at once, except while a checkpoint is
        being written: that write completes first (it is atomic either way, io.atomic_write).
        DataLoader workers forked inside ``fit`` inherit this handler, so Ctrl-C in a terminal
        (sent to the whole process group) does not kill them mid-batch."""
        if signum == signal.SIGINT and self.signal == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum

    def stop_error(self, epoch: int, state: TrainState) -> Preempted:
        """What the loop raises after the flagged signal, once last.pt is written."""
        if self.signal == signal.SIGINT:
            return Interrupted(
                f"interrupted: checkpoint saved at epoch {epoch} step {state.step}; "
                "re-run with --resume"
            )
        if state.batch_in_epoch:
            return Preempted(f"SIGTERM at epoch {epoch} batch {state.batch_in_epoch}")
        return Preempted(f"SIGTERM after epoch {epoch}")

    def _hard_stop(self) -> Interrupted:
        """A second Ctrl-C before the checkpoint of this step was written."""
        if self.saved_at is None:
            return Interrupted(
                "interrupted before the first checkpoint was written; nothing to resume "
                "(re-run without --resume)"
            )
        epoch, step = self.saved_at
        return Interrupted(
            f"interrupted: stopped at once (second Ctrl-C); the checkpoint of epoch {epoch} "
            f"step {step} is intact; re-run with --resume"
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """SIGTERM and SIGINT handled by this object for the duration (main thread only)."""
        try:
            old = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
            }
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        except KeyboardInterrupt:
            if self.signal != signal.SIGINT:  # not ours (e.g. raised by a task)
                raise
            raise self._hard_stop() from None
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
