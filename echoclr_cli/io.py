"""Atomic file writes: write to a temp file in the same directory, fsync, rename.

A crash (kill -9, disk full) during a write leaves the previous file intact and never a partial
file under the final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
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


def atomic_write_csv(path: Path, df, perms: int | None = None) -> None:
    atomic_write(path, lambda f: df.to_csv(f, index=False), mode="w", perms=perms)


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
