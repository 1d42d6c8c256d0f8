"""The files a preprocess writes, split into public and private (docs/PRIVACY.md).

Public (``DATA/``): manifest.csv, skipped.csv (file references, no paths), report.json,
dataset.json (status, no salt, no input paths), labels_report.json, preview.png (masked stored
frames only). Private (``DATA/private/``, 0700 / 0600): salt.json, id_map.csv,
skipped_paths.csv, label_issues.csv, preview_raw.png (raw frames with the sector outline),
inputs.json.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from echoclr_cli.data import privacy, readers
from echoclr_cli.data.label_issues import label_issue
from echoclr_cli.data.manifest import SPLITS
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write, atomic_write_csv, atomic_write_json, png_grid
from echoclr_cli.preprocess import sector

PREVIEW_TILE = 160
FORMAT = 2  # dataset dir format: 2 = private/ folder, secret salt, status in dataset.json


def preview_tiles(frames: np.ndarray, crop: sector.SectorCrop, stored: np.ndarray) -> np.ndarray:
    """Before (middle raw frame, sector outline in red) | after (stored frame): (P, 2P, 3) RGB.
    The left half shows raw pixels (burned-in text): private only."""
    mid = frames[len(frames) // 2]
    before = mid if mid.ndim == 3 else cv2.cvtColor(mid, cv2.COLOR_GRAY2RGB)
    before = np.ascontiguousarray(before)
    contours, _ = cv2.findContours(
        crop.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(before, contours, -1, (255, 0, 0), max(1, before.shape[0] // 150))
    after = stored[len(stored) // 2]
    after = (
        after if after.ndim == 3 else cv2.cvtColor(np.ascontiguousarray(after), cv2.COLOR_GRAY2RGB)
    )
    p = PREVIEW_TILE
    scale = p / max(before.shape[:2])
    small = cv2.resize(before, (max(1, round(before.shape[1] * scale)), max(1, round(before.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    tile = np.zeros((p, 2 * p, 3), np.uint8)
    tile[: small.shape[0], : small.shape[1]] = small
    tile[:, p:] = cv2.resize(after, (p, p), interpolation=cv2.INTER_NEAREST)
    return tile


def _montage(tiles: list[np.ndarray]) -> bytes | None:
    return png_grid(tiles, cols=2, separators=True)


def write_previews(out: Path, tiles: list[np.ndarray]) -> dict[str, Path]:
    """Public ``preview.png``: the stored (masked, cropped) frames only. Private
    ``preview_raw.png``: raw frame with the sector outline | stored frame."""
    if not tiles:
        return {}
    p = PREVIEW_TILE
    public = _montage([np.ascontiguousarray(t[:, p:]) for t in tiles])
    raw = _montage(tiles)
    paths = {}
    if public is not None:
        paths["preview"] = Path(out) / "preview.png"
        atomic_write(paths["preview"], lambda f: f.write(public))
    if raw is not None:
        paths["preview_raw"] = privacy.write_private_bytes(out, privacy.RAW_PREVIEW, raw)
    return paths


def id_map_frame(ids: dict[tuple[str, str], str], manifest: pd.DataFrame) -> pd.DataFrame:
    used = {("video", v) for v in manifest.get("video_id", [])}
    used |= {("study", v) for v in manifest.get("study_id", [])}
    used |= {("patient", v) for v in manifest.get("patient_id", [])}
    rows = [{"kind": k, "original": o, "hashed": h} for (k, h), o in ids.items() if (k, h) in used]
    return pd.DataFrame(rows, columns=["kind", "original", "hashed"]).sort_values(
        ["kind", "original"]
    )


def previous_ids(out: Path) -> dict[tuple[str, str], str]:
    """The private id map of an earlier run in ``out`` (kept for reused videos)."""
    return {
        (kind, hashed): orig
        for kind, m in privacy.read_id_map(out).items()
        for hashed, orig in m.items()
    }


def write_skipped(
    out: Path, skipped: list[dict], salt: str, root: Path, files: dict[str, Path]
) -> tuple[Path, pd.DataFrame]:
    """Public ``skipped.csv`` (file = a non-identifying reference, detail scrubbed of paths) and
    private ``skipped_paths.csv`` (reference -> original path and full detail)."""
    pub, priv = [], []
    for rec in skipped:
        rel = str(rec["file"])
        ref = privacy.file_ref(salt, rel)
        parts = [q for q in Path(rel).parts if len(q) >= 4]
        full = files.get(rel)
        detail = privacy.scrub(rec.get("detail", ""), str(full) if full else "", rel,
                               Path(rel).name, str(root), *parts)  # fmt: skip
        pub.append({"file": ref, "reason": rec["reason"], "detail": detail})
        priv.append({"file": ref, "path": rel, "detail_private": rec.get("detail", "")})
    df = pd.DataFrame(pub, columns=["file", "reason", "detail"])
    privacy.write_private_csv(
        out, privacy.SKIPPED_PATHS, pd.DataFrame(priv, columns=["file", "path", "detail_private"])
    )
    path = Path(out) / "skipped.csv"
    atomic_write_csv(path, df)
    return path, df


HEADER_WARNINGS = "header_warnings.json"


def write_header_warnings(out: Path, counts: dict[str, int], notes: list[str]) -> Path:
    """Public ``header_warnings.json``: the DICOM header warnings of this run counted by reason
    (never a tag value: bounds.warning_reason), and one summary line in ``notes``."""
    counts = {k: int(v) for k, v in sorted(counts.items()) if v}
    total = sum(counts.values())
    path = Path(out) / HEADER_WARNINGS
    atomic_write_json(path, {"n_warnings": total, "by_reason": counts,
                             "note": "DICOM header warnings of the files read in this run, by "
                                     "reason; values are never shown"})  # fmt: skip
    if total:
        parts = ", ".join(f"{k} ({v})" for k, v in counts.items())
        notes.append(f"{total} DICOM header warning(s), counted and not printed (they can hold "
                     f"tag values): {parts}; see {HEADER_WARNINGS}")  # fmt: skip
    return path


def public_config(pc) -> dict:
    """The preprocess section without the salt and the input paths (those are private)."""
    d = pc.model_dump(mode="json")
    for k in ("salt", "input", "labels", "external_input", "view_model"):
        d.pop(k, None)
    return d


# --------------------------------------------------------------------------- summary
def stats(values: pd.Series) -> dict[str, float]:
    if values.empty:
        return {}
    return {"min": float(values.min()), "median": float(values.median()),
            "mean": round(float(values.mean()), 3), "max": float(values.max())}  # fmt: skip


def public_note(note: str, refs: dict[str, str], root: Path) -> str:
    """A warning line ``rel: text`` with the path replaced by the file reference."""
    rel, sep, text = note.partition(": ")
    if sep and rel in refs:
        return f"{refs[rel]}: {privacy.scrub(text, rel, str(root))}"
    return privacy.scrub(note, str(root))


def unmatched_labels(
    inv, manifest: pd.DataFrame, seen: set[str], matched: set[str] = frozenset()
) -> list[dict]:
    """unmatched_id / no_videos issues for label rows whose id has no stored video.
    ``matched``: the hashed label keys (``inv.key``) of the stored videos."""
    stored = {
        "study": set(manifest.get("study_id", [])),
        "patient": set(manifest.get("patient_id", [])),
    }
    stored[inv.key] = stored.get(inv.key, set()) | set(matched)
    out = []
    for r in inv.label_rows:
        if r.hashed in stored.get(r.key, ()) or r.hashed in inv.view_excluded:
            continue  # stored, or excluded on purpose by the view filter
        kind = "no_videos" if r.hashed in seen else "unmatched_id"
        out.append(label_issue(kind, r.source, r.line, None, None, r.original,
                               f"no video in the dataset has this {r.key} id", r.hashed))  # fmt: skip
    return out


def failure(manifest, n_fail, n_inputs, reasons, label_report, leak, pc, paths):
    """The UserError that marks the dataset failed (None when it is usable)."""
    skipped = paths["skipped"]
    if manifest.empty:
        return UserError(
            f"no usable video ({n_inputs} inputs; skipped by reason: {dict(reasons)}); the "
            "dataset is marked failed",
            fix=f"see {skipped} for every file and its reason",
        )
    if leak is not None:
        return UserError(leak.message + "; the dataset is marked failed", fix=leak.fix)
    if n_fail / max(1, n_inputs) > pc.max_skipped_frac:
        fails = {r: n for r, n in reasons.items() if r in readers.FAILURE_REASONS}
        return UserError(
            f"{n_fail} of {n_inputs} inputs ({n_fail / n_inputs:.1%}) could not be used {fails}, "
            f"above preprocess.max_skipped_frac={pc.max_skipped_frac:g}; all outputs were "
            "written and the dataset is marked failed",
            fix=f"inspect {skipped}; fix the files or raise preprocess.max_skipped_frac",
        )
    if label_report and label_report["n_errors"] and not pc.allow_label_issues:
        shown = "; ".join(
            f"{v['count']} {k} ({', '.join(e['where'] for e in v['examples'][:3])}"
            + (", ..." if v["count"] > 3 else "") + ")"
            for k, v in label_report["issues"].items() if v["error"]
        )  # fmt: skip
        return UserError(
            f"label problems: {shown}; all in {paths['labels_report']}; the dataset is marked "
            "failed",
            fix="fix the label file, or accept them with --allow-label-issues (bad values "
            "become unknown, duplicated ids keep their first row)",
        )
    return None


def split_sizes(m: pd.DataFrame) -> dict[str, dict[str, int]]:
    out = {}
    for s in SPLITS:
        part = m[m["split"] == s] if not m.empty else m
        if len(part):
            out[s] = {"videos": len(part), "studies": int(part["study_id"].nunique()),
                      "patients": int(part["patient_id"].nunique())}  # fmt: skip
    return out


def prevalence(m: pd.DataFrame, labels: list[str]) -> dict[str, dict[str, dict]]:
    """Study-level prevalence per split and label: positives / studies with a known label."""
    out: dict[str, dict[str, dict]] = {}
    for s in SPLITS:
        part = m[m["split"] == s] if not m.empty else m
        if not len(part):
            continue
        out[s] = {}
        for col in labels:
            per_study = part.groupby("study_id")[col].max().dropna()
            k, n = int(per_study.sum()), len(per_study)
            out[s][col] = {"positive": k, "known": n, "rate": round(k / n, 4) if n else None}
    return out
