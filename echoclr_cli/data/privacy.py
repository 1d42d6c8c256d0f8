"""De-identification: salted id hashes, the per-dataset secret salt, the private folder.

A hashed id is ``'p'|'s'|'v'|'f' + 15 hex digits`` of ``sha256(salt \\0 kind \\0 value)``; it
never parses as a number. Without the salt it cannot be recomputed from an original id, so the
salt is a secret: by default 32 random hex digits made per dataset (``secrets.token_hex``).

Everything that can re-identify a patient lives in ``DATA/private/`` (created 0700, files 0600
whatever the umask) and nowhere else: the salt, ``id_map.csv`` (original -> hashed ids), the
original paths of skipped files, label-file rows with their original ids, the raw-frame preview
and the input paths. docs/PRIVACY.md says what is public and why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import pandas as pd

from echoclr_cli.config.load import PRIVATE as REDACTED  # what dumps show: never a salt itself
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write, atomic_write_csv, atomic_write_json, output_error, read_csv

PRIVATE = "private"
DIR_MODE = 0o700
FILE_MODE = 0o600
SALT_FILE = "salt.json"
ID_MAP = "id_map.csv"
SKIPPED_PATHS = "skipped_paths.csv"
LABEL_ROWS = "label_issues.csv"
RAW_PREVIEW = "preview_raw.png"
RUN_FILE = "inputs.json"
SALT_ENV = "ECHOCLR_SALT"  # a site's salt from the environment: never enters the config


def hash_id(salt: str, kind: str, value: str) -> str:
    """Salted, de-identifying id: 'p'/'s'/'v'/'f' + 15 hex digits (never parses as a number)."""
    digest = hashlib.sha256(f"{salt}\x00{kind}\x00{value}".encode()).hexdigest()
    return kind[0] + digest[:15]


def source_hash(salt: str, path: Path, chunk: int = 1 << 20) -> str:
    """Public hash of an input file's bytes: HMAC-SHA256 keyed by the dataset's salt, 16 hex
    digits, read in chunks. Equal files of one dataset share it (duplicates are found); without
    the salt it cannot be computed from a raw copy of the file, and two datasets do not link."""
    h = hmac.new(salt.encode(), digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def given_salt(configured: str | None) -> str | None:
    """The user's salt: ``preprocess.salt`` (flag or config file), else ``$ECHOCLR_SALT``.
    A redacted dump's ``<private>`` is refused: it is a public word, not the salt."""
    if configured == REDACTED:
        raise UserError(
            f"preprocess.salt is '{REDACTED}': a config dump (config.yaml, sweep.yaml) was given "
            "as --config, and it never holds the salt",
            fix=f"give the salt itself (--salt, ${SALT_ENV}) or leave it unset",
        )
    return configured or os.environ.get(SALT_ENV) or None


def file_ref(salt: str, rel: str) -> str:
    """Public reference of an input file (skipped.csv): 'f' + 15 hex digits; its path is only
    in ``private/skipped_paths.csv``."""
    return hash_id(salt, "file", rel)


def private_dir(data_dir: Path, create: bool = True) -> Path:
    """``DATA/private``, created (or tightened) to 0700 regardless of the umask."""
    p = Path(data_dir) / PRIVATE
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, DIR_MODE)
        except OSError as e:
            raise output_error(p, e) from None
    return p


def write_private_csv(data_dir: Path, name: str, df: pd.DataFrame) -> Path:
    path = private_dir(data_dir) / name
    atomic_write_csv(path, df, perms=FILE_MODE)
    return path


def write_private_json(data_dir: Path, name: str, obj) -> Path:
    path = private_dir(data_dir) / name
    atomic_write_json(path, obj, perms=FILE_MODE)
    return path


def write_private_bytes(data_dir: Path, name: str, data: bytes) -> Path:
    path = private_dir(data_dir) / name
    atomic_write(path, lambda f: f.write(data), perms=FILE_MODE)
    return path


def resolve_salt(data_dir: Path, given: str | None) -> tuple[str, str]:
    """(salt, source) for a preprocess into ``data_dir``.

    ``given`` (a user salt) wins and is never echoed. Otherwise the dataset's own secret from
    ``private/salt.json`` (re-runs keep their ids), else a new random one. Source: user | dataset
    | random. The caller stores it with :func:`store_salt` (private only).
    """
    if given:
        return str(given), "user"
    path = Path(data_dir) / PRIVATE / SALT_FILE
    if path.exists():
        try:
            salt = json.loads(path.read_text()).get("salt")
        except (OSError, ValueError, AttributeError):
            salt = None
        if isinstance(salt, str) and salt:
            return salt, "dataset"
        raise UserError(
            f"{path} is unreadable, so the ids of this dataset cannot be reproduced",
            fix="restore the file, or preprocess into a new --output",
        )
    return secrets.token_hex(16), "random"


def store_salt(data_dir: Path, salt: str, source: str) -> None:
    write_private_json(
        data_dir, SALT_FILE, {"salt": salt, "source": "user" if source == "user" else "random"}
    )


def scrub(text: str, *secret: str) -> str:
    """``text`` with each non-empty ``secret`` (paths, ids, the salt) replaced by ``<private>``."""
    out = str(text)
    for s in sorted({str(x) for x in secret if x and len(str(x)) >= 2}, key=len, reverse=True):
        out = out.replace(s, "<private>")
    return out


def read_id_map(data_dir: Path) -> dict[str, dict[str, str]]:
    """``{kind: {hashed: original}}`` from ``private/id_map.csv`` (empty when absent)."""
    path = Path(data_dir) / PRIVATE / ID_MAP
    if not path.exists():
        return {}
    df = read_csv(path, dtype=str, keep_default_na=False)
    out: dict[str, dict[str, str]] = {}
    for kind, orig, hashed in zip(df["kind"], df["original"], df["hashed"], strict=True):
        out.setdefault(kind, {})[hashed] = orig
    return out
