"""Atomic file writes: write to a temp file in the same directory, fsync, rename.

A crash (kill -9, disk full) during a write leaves the previous file intact and never a partial
file under the final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echoclr_cli.errors import UserError


def atomic_write(
    path: Path, writer: Callable[[Any], None], mode: str = "wb", perms: int | None = None
) -> None:
    """Call ``writer(fileobj)`` on a temp file next to ``path`` then rename it over ``path``.

    ``perms``: file mode regardless of the umask (0o600 for private files); default: follow the
    umask like ``open()``. An OSError (read-only dir, permission, no space) becomes a one-line
    UserError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from None
    f = None
    try:
        with os.fdopen(fd, mode) as raw:
            f = _WriteErrors(raw)
            writer(f)
            f.flush()
            os.fsync(raw.fileno())
        # mkstemp makes 0600; follow the umask like open() unless told otherwise
        os.chmod(tmp, perms if perms is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        _cleanup(tmp)
        # A writer may turn the OSError of a failed write into its own error (torch.save
        # raises RuntimeError "unexpected pos"), so the file object records it.
        if _is_enospc(e) or (f is not None and _is_enospc(f.error)):
            raise UserError(
                f"disk full while writing {path}; earlier outputs are intact",
                fix="free disk space and re-run (use --resume for training runs)",
            ) from None
        if isinstance(e, OSError):
            raise output_error(path, e) from None
        raise


def output_error(path: Path, e: OSError) -> UserError:
    """One line for an OSError on an output path (read-only, permission denied, no space)."""
    if _is_enospc(e):
        return UserError(
            f"disk full while writing {path}; earlier outputs are intact",
            fix="free disk space and re-run (use --resume for training runs)",
        )
    why = e.strerror or type(e).__name__
    return UserError(
        f"cannot write {path}: {why}",
        fix="choose a writable output dir (check its permissions and free space)",
    )


class _WriteErrors:
    """File object proxy that remembers the OSError of a failed ``write``."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._raw.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _is_enospc(e: BaseException | None) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cleanup(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str, perms: int | None = None) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w", perms=perms)


def atomic_write_json(path: Path, obj: Any, perms: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n", perms)


# --------------------------------------------------------------------------- CSV (the one writer)
# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection"):
# written with a leading single quote, which spreadsheets show as text. A cell that already
# starts with a quote gets one more, so reading back (``read_csv``) is exact.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text starting with ``= + - @``, a tab or CR (or a quote)
    gets a leading ``'``; numbers, and text that is a plain number (``-0.5``), are unchanged."""
    if not isinstance(value, str) or not value or not value.startswith((*FORMULA_START, _QUOTE)):
        return value
    if _NUMBER.fullmatch(value):
        return value
    return _QUOTE + value


def csv_value(cell: Any) -> Any:
    """The inverse of :func:`csv_cell` (a cell of a CSV this tool wrote -> the value)."""
    if isinstance(cell, str) and cell.startswith(_QUOTE) and cell[1:2] in (*FORMULA_START, _QUOTE):
        return cell[1:]
    return cell


def _text_columns(df) -> list[int]:
    """Positions of the text columns of ``df`` (object, string, categorical); numbers are not
    text, so ``-0.5`` in a numeric column is written as a number."""
    import pandas as pd

    return [
        i
        for i, dt in enumerate(df.dtypes)
        if pd.api.types.is_object_dtype(dt)
        or pd.api.types.is_string_dtype(dt)
        or isinstance(dt, pd.CategoricalDtype)
    ]


def _map_text(df, fn):
    """``df`` with ``fn`` applied to every text cell and column name (numeric columns as is)."""
    out = df.copy()
    for i in _text_columns(df):
        out.isetitem(i, df.iloc[:, i].astype(object).map(fn))
    out.columns = [fn(c) for c in df.columns]
    return out


def safe_csv_frame(df):
    """``df`` as written: every text cell and header neutralised (:func:`csv_cell`)."""
    return _map_text(df, csv_cell)


def atomic_write_csv(path: Path, df, perms: int | None = None) -> None:
    """The one CSV writer: atomic, text cells and headers neutralised (:func:`csv_cell`)."""
    import csv

    safe = safe_csv_frame(df)
    # a CR inside a cell is a line break to a reader unless quoted (pandas quotes only "\n")
    quoting = csv.QUOTE_ALL if _has_cr(safe) else csv.QUOTE_MINIMAL
    atomic_write(
        path, lambda f: safe.to_csv(f, index=False, quoting=quoting), mode="w", perms=perms
    )


def _has_cr(df) -> bool:
    cells = [c for c in df.columns if isinstance(c, str)]
    for i in _text_columns(df):
        cells += [v for v in df.iloc[:, i] if isinstance(v, str)]
    return any("\r" in c for c in cells)


def read_csv(path: Path, **kwargs):
    """``pandas.read_csv`` of a CSV this tool wrote, cells and headers restored
    (:func:`csv_value`)."""
    import pandas as pd

    return _map_text(pd.read_csv(path, **kwargs), csv_value)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (the one file-hash definition)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def png_grid(tiles: list, cols: int, separators: bool = False) -> bytes | None:
    """RGB uint8 tiles ``(H, W, 3)`` of one size -> PNG bytes of a grid ``cols`` wide, filled row
    by row (None when encoding fails). ``separators``: a white column at each tile's left edge."""
    import math

    import cv2
    import numpy as np

    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    grid = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for j, tile in enumerate(tiles):
        r, c = divmod(j, cols)
        grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
        if separators:
            grid[r * th : (r + 1) * th, c * tw] = 255
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else None
