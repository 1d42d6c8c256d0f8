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
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
    gets a leading ``'``; numbers, text that is a plain number (``-0.5``) and a lone ``-`` are
    unchanged."""
    if not isinstance(value, str) or not value or not value.startswith((*FORMULA_START, _QUOTE)):
        return value
    if value == "-" or _NUMBER.fullmatch(value):  # "-": a table's "no value", not a formula
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


def _map_text(df, fn, starts: tuple[str, ...]):
    """``df`` with ``fn`` applied to every text cell and column name (numeric columns as is);
    only cells starting with one of ``starts`` can change, the others are not visited."""
    out = df.copy()
    for i in _text_columns(df):
        col = df.iloc[:, i].astype(object)
        try:
            hit = col.str[:1].isin(starts).to_numpy(dtype=bool)  # non-text cells: NaN, no hit
        except AttributeError:  # no text in the column (booleans, integers as objects)
            continue
        if hit.any():
            col = col.copy()
            col[hit] = col[hit].map(fn)
        out.isetitem(i, col)
    out.columns = [fn(c) for c in df.columns]
    return out


def safe_csv_frame(df):
    """``df`` as written: every text cell and header neutralised (:func:`csv_cell`)."""
    return _map_text(df, csv_cell, (*FORMULA_START, _QUOTE))


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
    if any("\r" in c for c in df.columns if isinstance(c, str)):
        return True
    for i in _text_columns(df):
        try:
            cr = df.iloc[:, i].astype(object).str.contains("\r", regex=False)
        except AttributeError:  # no text in the column
            continue
        if bool(cr.fillna(False).astype(bool).any()):
            return True
    return False


def read_csv(path: Path, **kwargs):
    """``pandas.read_csv`` of a CSV this tool wrote, cells and headers restored
    (:func:`csv_value`)."""
    import pandas as pd

    return _map_text(pd.read_csv(path, **kwargs), csv_value, (_QUOTE,))


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


# --------------------------------------------------------------------------- a tool's own files
OWN_FILES = ".echoclr-files.json"  # in an output folder: which tool wrote which file (sha256)
_OWN_FORMAT = "echoclr-own-files"


@dataclass
class OwnFiles:
    """What :func:`replace_own_files` did: the files now in place, the earlier files of the same
    owner it removed, and the ones it kept because they changed since (relative paths)."""

    written: list[Path]
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def replace_own_files(
    dest: Path,
    owner: str,
    fill: Callable[[Path], Any],
    *,
    overwrite: bool = False,
    fix: str = "pass --overwrite or another output path",
) -> tuple[Any, OwnFiles]:
    """Write a tool's files into ``dest`` replacing only what the same ``owner`` wrote there.

    ``fill(stage)`` writes every file into a hidden staging folder inside ``dest`` (a failure
    leaves ``dest`` as it was); then each file is moved into place, the files ``owner`` wrote
    there before and did not write now are removed (only when unchanged since: their sha256 is
    in the index), and ``dest/.echoclr-files.json`` records ``owner``'s files. A file of anyone
    else (a user's, another tool's) is never removed; one with the name of a new file is
    refused (one line, ending with ``fix``) unless ``overwrite``. Returns ``(fill's result,
    OwnFiles)``.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".echoclr-stage-", dir=dest))
    except OSError as e:
        raise output_error(dest, e) from None
    try:
        index = read_own_files(dest)
        previous = index["owners"].get(owner, {})
        result = fill(stage)
        new = sorted(
            p.relative_to(stage).as_posix()
            for p in stage.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        for rel in new:
            target = dest / rel
            if target.is_dir() and not target.is_symlink():
                raise UserError(f"{target} is a folder", fix="pass another output path")
            if (target.exists() or target.is_symlink()) and rel not in previous and not overwrite:
                raise UserError(
                    f"{target} already exists and was not written by {owner.split(':')[0]} "
                    f"(not in {dest / OWN_FILES})",
                    fix=fix,
                )
        hashes = {rel: sha256_file(stage / rel) for rel in new}
        for rel in new:
            target = dest / rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, target)
            except OSError as e:
                raise output_error(target, e) from None
    finally:
        _remove_stage(stage)
    done = OwnFiles([dest / rel for rel in new])
    for rel, digest in sorted(previous.items()):
        if rel in hashes:
            continue
        target = dest / rel
        if _own_path(dest, rel) and target.is_file() and not target.is_symlink():
            if sha256_file(target) == digest:
                target.unlink()
                done.removed.append(rel)
                _remove_empty_parents(target.parent, dest)
                continue
            done.kept.append(rel)
    index = read_own_files(dest)  # again: another tool may have written meanwhile
    for other in index["owners"].values():
        for rel in hashes:
            other.pop(rel, None)
    index["owners"][owner] = hashes
    index["owners"] = {k: v for k, v in sorted(index["owners"].items()) if v}
    atomic_write_json(dest / OWN_FILES, index)
    return result, done


def read_own_files(dest: Path) -> dict[str, Any]:
    """``dest/.echoclr-files.json``: ``{"format", "owners": {owner: {relative path: sha256}}}``
    (empty when absent); entries that leave ``dest`` are dropped, a broken file is one line."""
    path = Path(dest) / OWN_FILES
    empty: dict[str, Any] = {"format": _OWN_FORMAT, "owners": {}}
    if not path.exists():
        return empty
    try:
        data = json.loads(path.read_text())
        owners = data["owners"] if data.get("format") == _OWN_FORMAT else None
        if not isinstance(owners, dict):
            raise ValueError("no owners")
        clean = {
            str(o): {str(r): str(h) for r, h in files.items() if _own_path(dest, str(r))}
            for o, files in owners.items()
            if isinstance(files, dict)
        }
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
        raise UserError(
            f"{path} is not an echoclr file index ({type(e).__name__})",
            fix="remove it (then echoclr replaces no earlier file of its own there)",
        ) from None
    return {"format": _OWN_FORMAT, "owners": clean}


def _own_path(dest: Path, rel: str) -> bool:
    """A relative path that stays inside ``dest`` (no absolute path, no ``..``, no link out)."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or rel == OWN_FILES:
        return False
    root = Path(dest).resolve()
    return (root / p).resolve().is_relative_to(root)


def _remove_empty_parents(folder: Path, dest: Path) -> None:
    """``rmdir`` the now empty folders from ``folder`` up to (not including) ``dest``."""
    while folder != dest and Path(dest) in folder.parents:
        try:
            folder.rmdir()  # only an empty folder: never anyone's file
        except OSError:
            return
        folder = folder.parent


def _remove_stage(stage: Path) -> None:
    """Remove the staging folder :func:`replace_own_files` made (our own temporary folder)."""
    shutil.rmtree(stage, ignore_errors=True)
