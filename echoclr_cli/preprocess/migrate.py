"""Datasets of the previous format -> the current one (``echoclr preprocess --migrate DATA``).

The previous format kept the id salt in ``dataset.json`` (the default was the public constant
"echoclr", so every hashed id could be recomputed), ``id_map.csv`` next to the manifest with the
umask's permissions, original paths in ``skipped.csv`` and raw frames in ``preview.png``.
Migration re-hashes every id with a new secret salt (videos are renamed, not re-decoded), moves
everything identifying into ``private/`` and marks the dataset's status. Runs trained on the old
dataset see a changed manifest (their ``--resume`` is refused; finished runs still evaluate).
The rows are re-ordered by the new ids (the old order followed hashes under the public salt, so
a cohort list rebuilt it) and the old ``source_hash`` (sha256 of the raw file) is re-keyed as an
HMAC with the new salt (duplicates still share one). The splits are kept: results stay
comparable, but who is in which split can still be rebuilt from a cohort list; re-preprocess
from the raw archive into a new ``--output`` for splits keyed by the secret (docs/PRIVACY.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.data import privacy
from echoclr_cli.data.manifest import SPLITS, is_legacy, migrate_command
from echoclr_cli.data.manifest import dataset_json as _dataset_json
from echoclr_cli.data.store import load_video
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write_csv, atomic_write_json, read_csv
from echoclr_cli.preprocess import outputs


def refuse_legacy(data_dir: Path) -> None:
    """Refuse to write into a previous-format dataset dir (its ids would mix two salts)."""
    if is_legacy(data_dir):
        raise UserError(
            f"{data_dir} is a dataset of the previous format (its id salt and id map are not "
            "private)",
            fix=f"convert it first with `{migrate_command(data_dir)}`",
        )


def migrate_dataset(data_dir: Path) -> dict:
    """Convert a previous-format dataset dir in place; returns a summary dict.

    Refused (UserError, nothing changed) when the dir is not of the previous format or when its
    id map does not cover every manifest row (then re-run preprocess from the raw archive).
    """
    data_dir = Path(data_dir)
    if not is_legacy(data_dir):
        raise UserError(f"{data_dir} is not a previous-format dataset dir; nothing to migrate",
                        fix="run migrate only on a dataset that load refuses")  # fmt: skip
    meta = _dataset_json(data_dir)
    man_path = data_dir / "manifest.csv"
    manifest = read_csv(man_path, dtype=str, keep_default_na=False) if man_path.exists() else None
    old_map = data_dir / "id_map.csv"
    ids = read_csv(old_map, dtype=str, keep_default_na=False) if old_map.exists() else None
    salt = secrets.token_hex(16)
    renames: list[tuple[Path, Path]] = []
    new_map = pd.DataFrame(columns=["kind", "original", "hashed"])
    if manifest is not None and len(manifest):
        if ids is None:
            raise UserError(f"{data_dir}: no id_map.csv, so the ids cannot be re-hashed",
                            fix="re-run `echoclr preprocess` from the raw archive into a new "
                            "--output")  # fmt: skip
        orig = {(k, h): o for k, o, h in zip(ids["kind"], ids["original"], ids["hashed"],
                                             strict=True)}  # fmt: skip
        col_kind = {"video_id": "video", "study_id": "study", "patient_id": "patient"}
        missing = [
            v for col, kind in col_kind.items() for v in manifest[col] if (kind, v) not in orig
        ]
        if missing:
            raise UserError(
                f"{old_map} lacks {len(missing)} id(s) of manifest.csv, so they cannot be "
                "re-hashed; nothing was changed",
                fix="re-run `echoclr preprocess` from the raw archive into a new --output",
            )
        rows = []
        for col, kind in col_kind.items():
            new = [privacy.hash_id(salt, kind, orig[(kind, v)]) for v in manifest[col]]
            rows += [{"kind": kind, "original": orig[(kind, v)], "hashed": n}
                     for v, n in zip(manifest[col], new, strict=True)]  # fmt: skip
            manifest[col] = new
        new_paths = []
        for old_rel, vid in zip(manifest["path"], manifest["video_id"], strict=True):
            src, rel = data_dir / old_rel, f"videos/{vid}.npy"
            renames.append((src, data_dir / rel))
            new_paths.append(rel)
        manifest["path"] = new_paths
        manifest = _keyed_by_salt(manifest, salt)
        new_map = pd.DataFrame(rows).drop_duplicates().sort_values(["kind", "original"])
    # 1. private first (the secret salt, the id map, the raw preview, the input paths)
    privacy.store_salt(data_dir, salt, "random")
    privacy.write_private_csv(data_dir, privacy.ID_MAP, new_map)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    privacy.write_private_json(data_dir, privacy.RUN_FILE,
                               {k: cfg.get(k) for k in ("input", "labels", "external_input")})  # fmt: skip
    if (data_dir / "preview.png").exists():
        privacy.write_private_bytes(
            data_dir, privacy.RAW_PREVIEW, (data_dir / "preview.png").read_bytes()
        )
    # 2. videos under their new names (links; the old names go once the manifest is written)
    for src, dst in renames:
        if src.exists() and not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    if manifest is not None:
        atomic_write_csv(man_path, manifest)
    for src, dst in renames:
        if src.exists() and dst.exists() and src != dst:
            src.unlink()
    # 3. public files without paths, ids or salt
    _migrate_skipped(data_dir, salt, cfg.get("input") or "")
    _migrate_report(data_dir)
    _public_preview(data_dir, manifest)
    status, reason = _status(data_dir, manifest)
    for k in ("salt_id",):
        meta.pop(k, None)
    meta["config"] = {k: v for k, v in cfg.items()
                      if k not in ("salt", "input", "labels", "external_input")}  # fmt: skip
    meta.update(format=outputs.FORMAT, status=status, reason=reason,
                migrated=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
    atomic_write_json(data_dir / "dataset.json", meta)
    if old_map.exists():
        old_map.unlink()
    return {"videos": 0 if manifest is None else len(manifest), "status": status}


def _keyed_by_salt(manifest: pd.DataFrame, salt: str) -> pd.DataFrame:
    """Rows in the current order (split, then the new salted patient and study ids, file order
    kept within a study) and ``source_hash`` re-keyed by the secret salt."""
    if "source_hash" in manifest:
        manifest["source_hash"] = [
            hmac.new(salt.encode(), str(h).encode(), hashlib.sha256).hexdigest()[:16] if h else h
            for h in manifest["source_hash"]
        ]
    rank = {s: i for i, s in enumerate(SPLITS)}
    ranked = manifest.assign(_rank=manifest["split"].map(lambda s: rank.get(s, len(rank))))
    ranked = ranked.sort_values(["_rank", "patient_id", "study_id"], kind="stable")
    return ranked.drop(columns="_rank").reset_index(drop=True)


def _migrate_skipped(data_dir: Path, salt: str, root: str) -> None:
    path = data_dir / "skipped.csv"
    if not path.exists():
        return
    df = read_csv(path, dtype=str, keep_default_na=False)
    if "file" not in df.columns:
        return
    recs = df.to_dict("records")
    outputs.write_skipped(data_dir, recs, salt, Path(root) if root else Path("<input>"), {})


def _migrate_report(data_dir: Path) -> None:
    path = data_dir / "report.json"
    if not path.exists():
        return
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    rep.pop("input_dir", None)
    n = len(rep.get("warnings") or [])
    rep["warnings"] = (
        [f"{n} warning(s) removed by the migration (they named input files)"] if n else []
    )
    rep["paths"] = {k: v for k, v in (rep.get("paths") or {}).items() if k != "id_map"}
    atomic_write_json(path, rep)


def _public_preview(data_dir: Path, manifest: pd.DataFrame | None) -> None:
    """preview.png from the stored (masked) videos: middle frames of up to 8 videos."""
    import cv2

    if manifest is None or not len(manifest):
        (data_dir / "preview.png").unlink(missing_ok=True)
        return
    tiles = []
    for rel in manifest["path"][:8]:
        v = load_video(data_dir / rel)
        mid = np.asarray(v[len(v) // 2])
        rgb = mid if mid.ndim == 3 else cv2.cvtColor(np.ascontiguousarray(mid), cv2.COLOR_GRAY2RGB)
        p = outputs.PREVIEW_TILE
        tile = np.zeros((p, 2 * p, 3), np.uint8)
        tile[:, p:] = cv2.resize(rgb, (p, p), interpolation=cv2.INTER_NEAREST)
        tiles.append(tile)
    data = outputs._montage([np.ascontiguousarray(t[:, outputs.PREVIEW_TILE :]) for t in tiles])
    if data is not None:
        from echoclr_cli.io import atomic_write

        atomic_write(data_dir / "preview.png", lambda f: f.write(data))


def _status(data_dir: Path, manifest: pd.DataFrame | None) -> tuple[str, str | None]:
    if manifest is None or not len(manifest):
        return "failed", "no usable video (found by the migration)"
    try:
        rep = json.loads((data_dir / "report.json").read_text())
        frac, limit = float(rep.get("failure_frac", 0)), float(rep.get("max_skipped_frac", 1))
    except (OSError, ValueError, TypeError):
        return "ok", None
    if frac > limit:
        return "failed", (
            f"{frac:.1%} of the inputs could not be used, above max_skipped_frac={limit:g} "
            "(found by the migration)"
        )
    return "ok", None
