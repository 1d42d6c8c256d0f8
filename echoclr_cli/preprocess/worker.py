"""The preprocess worker: one raw file -> one masked, resized ``.npy`` + a small manifest row.

Runs in a worker process (``preprocess.pool.process_items`` starts the pool); gets its settings
once per process as a :class:`WorkerContext` and returns plain dicts, so the parent never holds videos.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from echoclr_cli.data import label_keys, readers
from echoclr_cli.data.dicom_fields import frame_rate_band
from echoclr_cli.data.layouts import discover as layouts
from echoclr_cli.data.layouts.base import Item
from echoclr_cli.data.manifest import OPTIONAL_COLUMNS
from echoclr_cli.data.privacy import hash_id, source_hash
from echoclr_cli.data.readers import ReadOptions, SkipVideo
from echoclr_cli.data.store import save_video
from echoclr_cli.data.video_reader import read_video
from echoclr_cli.io import sha256_file
from echoclr_cli.preprocess import outputs, sector


@dataclass
class WorkerContext:
    """Everything a worker needs, sent once per worker process."""

    out_dir: str
    salt: str
    opts: ReadOptions
    size: int
    color: str
    skip_doppler: bool
    use_regions: bool
    overwrite: bool
    previous: dict[str, dict]
    undecodable: set[str]
    view_excluded: set[str]
    key: str
    preview: set[str]
    resize: str = "whole_frame"  # preprocess.resize: whole_frame | sector_crop


# --------------------------------------------------------------------------- worker
_CTX: WorkerContext | None = None


def init_worker(ctx: WorkerContext) -> None:
    global _CTX
    _CTX = ctx
    cv2.setNumThreads(1)  # one file per process; no oversubscription
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed (kill -9 leaves its pool's queues open) exits instead of
    waiting for work forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def run_indexed(task: tuple[int, Item]) -> tuple[int, dict]:
    index, item = task
    assert _CTX is not None
    return index, process_item(item, _CTX)


def skip_result(rel: str, reason: str, detail: str, ids: tuple = ()) -> dict:
    """A skipped file; ``ids``: its hashed (study, patient, label key) ids when they were read."""
    return {"status": "skipped", "file": rel, "reason": reason, "detail": detail,
            "ids": [i for i in ids if i]}  # fmt: skip


def _originals(item: Item, header_study: str | None, header_patient: str | None) -> tuple:
    """(study, patient) original ids: the layout's, else the header's, else the folders'."""
    path_study, path_patient = item.meta.get("path_ids") or layouts.path_ids(item.rel)
    return (item.study_id or header_study or path_study,
            item.patient_id or header_patient or path_patient)  # fmt: skip


def _match(ctx: WorkerContext, item: Item, study: str, patient: str, keys: dict) -> tuple:
    """(hashed label key, shape of its value) of a video: what a ``--labels`` row is matched
    on (label_keys.video_key; the manifest's study/patient id for those keys). The shape (e.g.
    ``A + 7 digits``) names no value; it explains a label file that matches nothing."""
    value = label_keys.video_key(ctx.key, study, patient, keys, item.study_id)
    shape = label_keys.video_key_shape(ctx.key, study, patient, keys, item.study_id)
    return (hash_id(ctx.salt, ctx.key, value) if value else None), shape


def _header_facts(match: str | None, shape: str, modality_missing: bool) -> dict:
    """Row fields that never reach the manifest (``_``-prefixed): the label key and whether the
    DICOM had no Modality (counted in report.json / dataset.json)."""
    return {"_match": match, "_match_shape": shape, "_modality_missing": bool(modality_missing)}


def _reuse(item: Item, prev: dict, ctx: WorkerContext) -> dict | None:
    """An earlier run's row for an unchanged file: only its header is read again (Modality,
    label-key tags); None when that fails (the file is decoded again)."""
    header = None
    if item.kind == "dicom":
        try:
            header = readers.read_header(item.file)
        except SkipVideo as e:  # not_ultrasound: an earlier version stored it
            study, patient = _originals(item, *e.ids)
            match, _ = _match(ctx, item, study, patient, e.keys)
            return skip_result(item.rel, e.reason, e.detail,
                               (prev["study_id"], prev["patient_id"], match))  # fmt: skip
        except Exception:
            return None
    study, patient = _originals(item, header.study_id if header else None,
                                header.patient_id if header else None)  # fmt: skip
    match, shape = _match(ctx, item, study, patient, header.keys if header else {})
    if match in ctx.view_excluded:
        return skip_result(item.rel, "view_filter", "excluded by the view filter of the label file")
    row = {**prev, **_header_facts(match, shape, header.modality_missing if header else False)}
    return {"status": "reused", "row": row, "ids": None, "warnings": [], "preview": None}


def _same_source(prev: dict, file_hash: str, path: Path) -> bool:
    """Whether an earlier row was made from these bytes: its ``source_hash`` is this one, or
    the unsalted sha256 prefix of an earlier version (read again only then), so a dataset made
    before the HMAC is not decoded again."""
    old = prev.get("source_hash")
    if old == file_hash:
        return True
    return isinstance(old, str) and len(old) == 16 and old == sha256_file(path)[:16]


def process_item(item: Item, ctx: WorkerContext) -> dict:
    """Read one file, mask/crop/resize its sector, write ``videos/<video_id>.npy``.

    Returns a small dict: status ok|reused|skipped, the manifest row (hashed ids; ``_`` fields
    stay out of the manifest), the original ids (for id_map.csv), warnings and optional preview
    tiles. Never raises for bad input.
    """
    rel = item.rel
    video_id = hash_id(ctx.salt, "video", rel)
    try:
        file_hash = source_hash(ctx.salt, item.file)  # HMAC: links no raw copy (issue 23)
    except OSError as e:
        return skip_result(rel, "missing_file", f"{type(e).__name__}: {e}")
    npy_rel = f"videos/{video_id}.npy"
    npy = Path(ctx.out_dir) / npy_rel
    prev = ctx.previous.get(video_id)
    if prev and not ctx.overwrite and npy.exists() and _same_source(prev, file_hash, item.file):
        reused = _reuse(item, prev, ctx)
        if reused is not None:
            if reused["status"] == "reused":
                reused["row"]["source_hash"] = file_hash
            return reused
    study_id = patient_id = match = None
    try:
        if item.kind == "video":
            raw = read_video(item.file, ctx.opts)
        else:
            raw = readers.read_dicom(item.file, ctx.opts, ctx.undecodable)
        study, patient = _originals(item, raw.study_id, raw.patient_id)
        study_id = hash_id(ctx.salt, "study", study)
        patient_id = hash_id(ctx.salt, "patient", patient)
        match, shape = _match(ctx, item, study, patient, raw.keys)
        if match in ctx.view_excluded:
            raise SkipVideo("view_filter", "excluded by the view filter of the label file")
        stored, crop, channels = _mask_and_crop(raw, ctx, item.native)
    except SkipVideo as e:
        if study_id is None and any(e.ids):  # skipped after its header was read
            study, patient = _originals(item, *e.ids)
            study_id = hash_id(ctx.salt, "study", study)
            patient_id = hash_id(ctx.salt, "patient", patient)
            match, _ = _match(ctx, item, study, patient, e.keys)
        return skip_result(rel, e.reason, e.detail, (study_id, patient_id, match))
    except Exception as e:  # a bad file never stops the run; the reason names the error
        return skip_result(rel, "decode_error", f"{type(e).__name__}: {e}",
                           (study_id, patient_id, match))  # fmt: skip
    # Outside the per-file guard: a failing *output* write (disk full -> UserError, permissions)
    # is not the input file's fault and stops the run instead of skipping every later file.
    save_video(npy, stored)
    row = {
        "video_id": video_id, "study_id": study_id, "patient_id": patient_id, "split": "",
        "path": npy_rel, "n_frames": int(stored.shape[0]), "fps": round(float(raw.fps), 3),
        "fps_source": raw.fps_source, "height": int(stored.shape[1]),
        "width": int(stored.shape[2]), "channels": channels,
        "study_year": raw.study_year, "source_hash": file_hash,
    }  # fmt: skip
    row.update(_optional_fields(raw))
    row.update(_header_facts(match, shape, raw.modality_missing))
    preview = outputs.preview_tiles(raw.frames, crop, stored) if rel in ctx.preview else None
    notes = [f"{rel}: {w}" for w in raw.warnings]
    if item.native and raw.frames.shape[1:3] != (ctx.size, ctx.size):
        notes.append(f"{rel}: {raw.frames.shape[2]}x{raw.frames.shape[1]} frames of the echoclr "
                     f"layout resized whole to {ctx.size} px (never cropped)")  # fmt: skip
    if crop.source.endswith("fallback"):
        notes.append(f"{rel}: little motion; sector found from the time-max image")
    return {
        "status": "ok", "row": row, "ids": {"patient": (patient, patient_id),
        "study": (study, study_id), "video": (rel, video_id)}, "warnings": notes,
        "preview": preview, "sector": crop.source,
    }  # fmt: skip


def _optional_fields(raw: readers.RawVideo) -> dict:
    """The de-identified DICOM columns of a row (None for AVI/MP4); the frame-rate band falls
    back to the stored fps (already public) when the header has no frame rate."""
    out = {c: raw.fields.get(c) for c in OPTIONAL_COLUMNS}
    if out["frame_rate_band"] is None:
        out["frame_rate_band"] = frame_rate_band(raw.fps)
    return out


def _mask_and_crop(
    raw: readers.RawVideo, ctx: WorkerContext, native: bool = False
) -> tuple[np.ndarray, sector.SectorCrop, int]:
    """(T,H,W[,3]) raw frames -> stored uint8 video (T,S,S) or (T,S,S,3), the crop, channels.

    ``ctx.resize``: ``whole_frame`` masks and resizes the whole frame, ``sector_crop`` crops to
    the sector's box first. ``native`` (echoclr layout, already the published geometry): always
    the whole frame, so a size x size video is stored pixel-identical apart from the mask.
    """
    frames = raw.frames
    h, w = frames.shape[1:3]
    gray = sector.to_gray(frames)  # (T, H, W)
    roi = sector.region_roi(raw.regions, h, w) if ctx.use_regions else None
    mask, source = sector.detect_sector(gray, roi)
    if roi is not None:
        source = "region+" + source
    if mask.sum() < sector.MIN_AREA_SHARE * h * w:
        raise SkipVideo("no_sector", "no ultrasound sector found (static or empty frames)")
    spread = sector.channel_spread(frames, mask)  # (n,) uint8, zeros for gray input
    if ctx.skip_doppler and sector.is_color_doppler(spread):
        share = float((spread > sector.SAT_SPREAD).mean())
        raise SkipVideo("color_doppler", f"{share:.1%} of sector pixels in saturated colour")
    if ctx.color == "gray" or (ctx.color == "auto" and sector.channels_equal(spread)):
        frames = gray
    elif frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)  # (T, H, W, 3)
    if native or ctx.resize == "whole_frame":
        crop = sector.plan_whole(mask, ctx.size, source)
    else:
        crop = sector.plan_crop(mask, ctx.size, source)
    stored = sector.apply_crop(frames, crop)
    return stored, crop, 1 if stored.ndim == 3 else 3
