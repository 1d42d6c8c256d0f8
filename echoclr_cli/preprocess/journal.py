"""Preprocess journal: each finished file's result, appended as it completes.

``DATA/private/journal.jsonl`` (private: it names input files and holds original ids). The first
line is a header with a key of the run's salt, video settings and id key; an entry is one line
``{"rel", "fp", "sig", "res"}``: the file's path in the archive, its cheap fingerprint (size,
mtime_ns, inode, device), what the layout said about it (kind, ids) and the worker's result
(manifest row or skip, original ids, warnings; no preview). Every entry is flushed to the OS
as it is written (a kill -9 of the process loses none), fsync'd every ``FSYNC_EVERY`` entries
and at the end. A re-run reuses an entry whose fingerprint and layout facts are unchanged
without opening the file; a file whose fingerprint changed is hashed by its worker and reused
when its content is the same. At the end of a run the journal is rewritten with only the
current archive's files, so it stays the size of the archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from echoclr_cli.data import privacy
from echoclr_cli.io import atomic_write

JOURNAL = "journal.jsonl"
FSYNC_EVERY = 32
VERSION = 2  # 2: source_hash is an HMAC with the salt (entries of 1 hold the plain sha256)
# Tests only: SIGKILL the preprocess process after this many newly journaled files.
KILL_AFTER_ENV = "ECHOCLR_TEST_KILL_AFTER"
# Skip reasons that depend on more than the file and the video settings (label file view
# filter, a decoder installed since, a file that was missing): never reused from the journal.
NOT_REUSED = {"view_filter", "missing_decoder", "missing_file"}


def fingerprint(path: Path) -> list[int] | None:
    """``[size, mtime_ns, inode, device]`` of a file (None when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def item_sig(item) -> list:
    """What the layout says about a file that changes its row (kind, given ids, path ids)."""
    path_ids = item.meta.get("path_ids")
    return [item.kind, item.study_id, item.patient_id, list(path_ids) if path_ids else None]


def run_key(salt: str, settings: dict, key: str) -> str:
    blob = json.dumps({"v": VERSION, "salt": salt, "settings": settings, "key": key},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Journal:
    """Entries of earlier runs (``entries``: rel -> entry) and the append handle of this one."""

    def __init__(self, out: Path, key: str):
        self.path = privacy.private_dir(out) / JOURNAL
        self.key = key
        self.entries: dict[str, dict] = {}
        self._f = None
        self._unsynced = 0
        self.n_added = 0
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_bytes().split(b"\n")
        except OSError:
            return
        try:
            head = json.loads(lines[0])
        except (ValueError, IndexError):
            return
        if not isinstance(head, dict) or head.get("key") != self.key:
            return  # other salt / settings: nothing is reused
        for line in lines[1:]:
            try:  # the last line may be cut by a kill: it is simply not reused
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and "rel" in e and "res" in e:
                self.entries[e["rel"]] = e

    def lookup(self, item, fp: list[int] | None, out: Path) -> dict | None:
        """The journaled result of ``item`` when its fingerprint and layout facts are unchanged
        (and, for a stored video, its ``.npy`` is still there), else None."""
        e = self.entries.get(item.rel)
        if fp is None or e is None or e.get("fp") != fp or e.get("sig") != item_sig(item):
            return None
        res = e["res"]
        if res["status"] == "skipped":
            return None if res["reason"] in NOT_REUSED else res
        if not (out / res["row"]["path"]).exists():
            return None
        return res

    def previous_row(self, item) -> dict | None:
        """The journaled manifest row of ``item`` (its worker re-uses it when the content
        hash is unchanged), or None."""
        e = self.entries.get(item.rel)
        if e is None or e.get("sig") != item_sig(item) or e["res"]["status"] == "skipped":
            return None
        return e["res"]["row"]

    def open(self) -> None:
        """Start appending: the header and the still valid entries are rewritten first."""
        self._rewrite(self.entries.values())
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def add(self, item, fp: list[int] | None, res: dict) -> None:
        res = {k: v for k, v in res.items() if k != "preview"}
        entry = {"rel": item.rel, "fp": fp, "sig": item_sig(item), "res": res}
        self.entries[item.rel] = entry
        assert self._f is not None
        self._f.write(json.dumps(entry, separators=(",", ":"), default=_plain) + "\n")
        self._f.flush()
        self._unsynced += 1
        self.n_added += 1
        if self._unsynced >= FSYNC_EVERY:
            self.sync()
        kill_after = os.environ.get(KILL_AFTER_ENV)
        if kill_after and self.n_added >= int(kill_after):
            self.sync()
            os.kill(os.getpid(), signal.SIGKILL)

    def sync(self) -> None:
        if self._f is not None and self._unsynced:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._unsynced = 0

    def close(self, keep: set[str] | None = None) -> None:
        """Sync and close; ``keep``: compact to these files (the current archive)."""
        if self._f is None:
            return
        self.sync()
        self._f.close()
        self._f = None
        if keep is not None:
            self._rewrite(e for rel, e in self.entries.items() if rel in keep)

    def _rewrite(self, entries) -> None:
        head = json.dumps({"key": self.key, "version": VERSION})

        def write(f) -> None:
            f.write(head + "\n")
            for e in entries:
                f.write(json.dumps(e, separators=(",", ":"), default=_plain) + "\n")

        atomic_write(self.path, write, mode="w", perms=privacy.FILE_MODE)


def _plain(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
