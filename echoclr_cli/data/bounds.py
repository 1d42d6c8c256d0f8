"""Bounds on untrusted input, checked before a file is opened or decoded (FAULTS.md 39, 41, 44).

- :func:`pixel_excess`: rows x cols x frames x samples against ``preprocess.max_pixels``
  (skip reason ``too_large``), from a header read without pixel data.
- :func:`file_problem`: only regular files are opened (FIFOs, devices, sockets, also behind a
  link: ``not_regular_file``); links leaving the archive (``outside_archive``), links that loop
  (``symlink_loop``) and broken links (``missing_file``) are reported, never followed silently.
- :func:`read_bounded`: a label table (maybe .gz/.bz2/.xz/.zip) read within a size limit on
  the decompressed bytes (``preprocess.max_label_bytes``).
- :func:`header_warnings`: pydicom's warnings and log records while a header is read are
  caught and counted by a short reason that holds no tag value (:func:`warning_reason`); the
  pool collects the counts per file (:func:`take_header_warnings`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# 1024 x 1024 RGB x 1000 frames: a large echo cine (a 30-60 fps loop of 15-30 s at a high
# resolution) fits; a file claiming more is refused before any decoding.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 3 * 1000
# Header, overlays and pixel padding allowed on top of the pixel budget (16-bit samples) when the
# file's own size is checked before pydicom reads it.
HEADER_SLACK = 64 << 20
DEFAULT_MAX_LABEL_BYTES = 1 << 30  # 1 GiB of label table (decompressed)


# --------------------------------------------------------------------------- pixel budget
def pixel_excess(cols: int, rows: int, frames: int, samples: int, budget: int) -> str | None:
    """None when ``cols x rows x frames x samples`` fits ``budget``, else the skip detail."""
    total = int(cols) * int(rows) * max(1, int(frames)) * max(1, int(samples))
    if total <= budget:
        return None
    return (f"{int(cols)}x{int(rows)} x {max(1, int(frames))} frame(s) x {max(1, int(samples))} "
            f"sample(s) = {total:,} > preprocess.max_pixels {budget:,} (refused before "
            "decoding)")  # fmt: skip


def file_bytes_excess(size: int, budget: int) -> str | None:
    """A DICOM file larger than its whole pixel budget could be (16-bit samples + header)."""
    limit = 2 * budget + HEADER_SLACK
    if size <= limit:
        return None
    return (f"file of {size:,} bytes > {limit:,} (2 x preprocess.max_pixels + header; refused "
            "before reading)")  # fmt: skip


# --------------------------------------------------------------------------- label files
COMPRESSED = (".gz", ".bz2", ".xz", ".zip")
_CHUNK = 1 << 20


def read_bounded(path: Path, limit: int, key: str = "preprocess.max_label_bytes") -> bytes:
    """The bytes of a (maybe compressed: .gz, .bz2, .xz, .zip with one file) table, read in
    chunks and refused once more than ``limit`` bytes come out of the decompressor: at most
    ``limit`` bytes are ever held. A FIFO or device is refused without being opened."""
    import bz2
    import gzip
    import lzma
    import zipfile

    from echoclr_cli.errors import UserError

    path = Path(path)
    try:
        what = not_regular(os.stat(path).st_mode)
    except OSError as e:
        raise UserError(
            f"{path}: cannot read the file ({e.strerror})", fix="check the path"
        ) from None
    if what:
        raise UserError(f"{path}: {what}, not a regular file", fix="give a regular CSV file")
    suffix = path.suffix.lower()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
    try:
        if suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise UserError(f"{path}: a zip label file must hold exactly one file "
                                    f"({len(names)} found)", fix="zip one CSV file")  # fmt: skip
                with z.open(names[0]) as f:
                    return _read_limited(f, path, limit, key)
        with opener(path, "rb") as f:
            return _read_limited(f, path, limit, key)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not readable ({type(e).__name__}: {e})",
                        fix="check the file (or give it uncompressed)") from None  # fmt: skip


def _read_limited(f, path: Path, limit: int, key: str) -> bytes:
    from echoclr_cli.errors import UserError

    parts, total = [], 0
    while chunk := f.read(min(_CHUNK, limit + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            grown = " once decompressed" if path.suffix.lower() in COMPRESSED else ""
            raise UserError(
                f"{path}: more than {limit} bytes{grown} (limit {key})",
                fix=f"check the file; if it is genuine, raise the limit: --set {key}=N",
            )
    return b"".join(parts)


# --------------------------------------------------------------------------- files and links
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
)  # fmt: skip
OUTSIDE_DETAIL = ("a link leading outside the input folder (not read; "
                  "--follow-external-links to read it)")  # fmt: skip
LOOP_DETAIL = "a link that leads back to itself or to a folder above it (not followed)"


def not_regular(mode: int) -> str | None:
    """What a non-regular file is (``a FIFO (named pipe)``, ...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def inside(path: str, root: str) -> bool:
    """Whether real path ``path`` is ``root`` or below it (both real paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_link(path: Path) -> tuple[str | None, tuple[str, str] | None]:
    """(real path, None), or (None, (reason, detail)) for a loop or a broken link."""
    try:
        return os.path.realpath(path, strict=True), None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, ("symlink_loop", LOOP_DETAIL)
        return None, ("missing_file", "a broken link (its target does not exist)")


def file_problem(path: Path, root: Path, follow_external: bool = False) -> tuple[str, str] | None:
    """Why input file ``path`` under ``root`` is not opened (reason, detail), or None.

    The file itself is checked first (``stat`` follows links, never opens): a FIFO, device or
    socket, also behind a link (``/dev/zero``), is ``not_regular_file``; then a path that
    resolves outside ``root`` is ``outside_archive`` unless ``follow_external``."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop", LOOP_DETAIL
        return "missing_file", f"cannot stat the file ({e.strerror or type(e).__name__})"
    what = not_regular(st.st_mode)
    if what:
        return "not_regular_file", f"{what}, not a regular file (never opened)"
    if not follow_external and not inside(os.path.realpath(path), os.path.realpath(root)):
        return "outside_archive", OUTSIDE_DETAIL
    return None


# --------------------------------------------------------------------------- header warnings
HEADER_WARNINGS: Counter = Counter()  # reason -> count, this process (take_header_warnings)
_VR = r"([A-Z]{2})\b"
_REASONS = (
    (re.compile(r"Invalid value for VR " + _VR), "invalid value for VR {}"),
    (re.compile(r"maximum length of \d+ allowed for VR " + _VR), "value too long for VR {}"),
    (re.compile(r"using " + _VR + r" VR for reading"), "VR differs from the dictionary, read as {}"),
    (re.compile(r"doesn't allow a value of"), "invalid date/time value"),
    (re.compile(r"encoding|Character Set|code extension", re.I), "character set problem"),
    (re.compile(r"Unknown DICOM tag"), "unknown tag"),
    (re.compile(r"Deferred read"), "file changed while read"),
    (re.compile(r"explicit VR|implicit VR|little endian|big endian", re.I),
     "transfer syntax differs from the data"),
    (re.compile(r"[Ff]ile meta|preamble|DICM"), "file meta information problem"),
)  # fmt: skip


def warning_reason(message: str) -> str:
    """A short reason for a pydicom warning that holds no tag value: only the fixed words of a
    known message and a VR code are kept; anything else is ``other header warning``."""
    for rx, reason in _REASONS:
        m = rx.search(message)
        if m:
            return reason.format(*m.groups())
    return "other header warning"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@contextmanager
def header_warnings() -> Iterator[None]:
    """Every warning (``warnings``) and pydicom log record raised inside is caught, never
    printed, and counted by :func:`warning_reason` in :data:`HEADER_WARNINGS` (a message both
    warned and logged, as pydicom does, counts once)."""
    logger = logging.getLogger("pydicom")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        messages = [str(w.message) for w in caught]
        warned = set(messages)
        messages += [m for m in handler.messages if m not in warned]
        HEADER_WARNINGS.update(warning_reason(m) for m in messages)


def take_header_warnings() -> dict[str, int]:
    """The counts since the last call (then reset)."""
    out = dict(HEADER_WARNINGS)
    HEADER_WARNINGS.clear()
    return out
