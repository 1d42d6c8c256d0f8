"""``echoclr preprocess``: raw archive -> dataset dir (layouts/readers -> sector -> store -> manifest).

Workers (processes) each read one file, mask and crop the sector, write one ``.npy`` and return a
small row; the parent streams rows (never videos), so memory is flat in the number of videos.
Every finished file is appended to a private journal (preprocess/journal.py) as it completes: a
re-run, after a kill -9 or not, reuses the files whose fingerprint (size, mtime, inode, device)
is unchanged without opening them, hashes only new or changed files (reused when their content
is the same) and decodes the rest; ``overwrite`` redoes them all (preprocess/pool.py runs the
items). Nothing the user owns is deleted. Outputs (docs/ARCHITECTURE.md, "Dataset dir"):
``manifest.csv, dataset.json, skipped.csv, report.json, id_map.csv, videos/*.npy, preview.png``.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.config.schema import Config
from echoclr_cli.data import privacy, readers
from echoclr_cli.data.dicom_fields import public_vendor_columns
from echoclr_cli.data.label_file import match_labels
from echoclr_cli.data.label_issues import issue_lines, private_issue_rows
from echoclr_cli.data.label_issues import issues_report as label_issues_report
from echoclr_cli.data.layouts import discover as layouts
from echoclr_cli.data.manifest import (
    MANIFEST_COLUMNS,
    OPTIONAL_COLUMNS,
    check_leakage,
    dataset_json,
)
from echoclr_cli.data.privacy import hash_id
from echoclr_cli.data.readers import ReadOptions
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write_csv, atomic_write_json, output_error, read_csv
from echoclr_cli.preprocess import outputs, worker
from echoclr_cli.preprocess.journal import Journal, run_key
from echoclr_cli.preprocess.migrate import refuse_legacy
from echoclr_cli.preprocess.pool import (
    PREVIEW_VIDEOS,
    partition_items,
    process_items,
    resolve_workers,
)
from echoclr_cli.preprocess.table import assign_video_splits, join_meta, manifest_frame, split_order
from echoclr_cli.preprocess.writer_lock import LOCK_NAME, dataset_lock

MAX_WARNINGS = 200


@dataclass
class PreprocessResult:
    """Summary of a preprocess run (also written to ``report.json``).

    skipped_by_reason: count per reason code (filters and failures); failures: files that should
    have worked (counted against ``max_skipped_frac``); split_sizes: split -> videos / studies /
    patients; prevalence: split -> label -> {positive, known, rate}; frames / fps: min, median,
    mean, max over stored videos.
    """

    output_dir: Path
    input_dir: Path
    layout: str
    n_inputs: int
    n_videos: int
    n_reused: int
    n_skipped: int
    n_failures: int
    skipped_by_reason: dict[str, int]
    split_sizes: dict[str, dict[str, int]]
    prevalence: dict[str, dict[str, dict]]
    label_columns: list[str]
    frames: dict[str, float]
    fps: dict[str, float]
    fps_source: dict[str, int]
    channels: dict[str, int]
    warnings: list[str]
    paths: dict[str, Path] = field(default_factory=dict)
    n_decoded: int = 0  # files sent to the workers (the others came from the journal)
    seconds: float = 0.0
    status: str = "ok"
    reason: str | None = None
    label_report: dict | None = None

    def to_dict(self) -> dict:
        """Public form (report.json): no input path, no private file."""
        d = asdict(self)
        d.pop("input_dir")
        d["output_dir"] = str(self.output_dir)
        d["paths"] = {
            k: str(v) for k, v in self.paths.items() if privacy.PRIVATE not in Path(v).parts
        }
        return d


# --------------------------------------------------------------------------- orchestration
def resolve_input(cfg: Config, input_dir: Path | None, progress=None) -> Path:
    """``input_dir``, else ``preprocess.input``, else ``paths.raw`` (synthesised when absent)."""
    if input_dir is None:
        input_dir = cfg.preprocess.input
    if input_dir is not None:
        input_dir = Path(input_dir)
        if not input_dir.is_dir():
            raise UserError(f"input dir not found: {input_dir}", fix="check --input")
        return input_dir
    raw = Path(cfg.paths.raw)
    meta = raw / "synth.json"
    incomplete = meta.exists() and not json.loads(meta.read_text() or "{}").get("complete")
    if not raw.exists() or incomplete or (raw.is_dir() and not any(raw.iterdir())):
        from echoclr_cli.synth.archive import synthesize

        synthesize(cfg, raw, progress=progress)
    return raw


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory", fix="choose another --output")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        ours = (out / "dataset.json").exists() or (out / "manifest.csv").exists()
        if not ours and not overwrite:
            raise UserError(
                f"{out} is not empty and is not an echoclr dataset dir",
                fix="choose an empty or new --output (or --overwrite to write into it; nothing "
                "is deleted)",
            )


VIDEO_SETTINGS = (
    "size", "color", "skip_color_doppler", "use_dicom_regions", "max_frames", "min_frames",
    "min_fps", "fallback_fps", "resize", "short_videos",
)  # fmt: skip
# Datasets written before these settings existed were made with these values.
LEGACY_SETTINGS = {"resize": "sector_crop", "short_videos": "skip"}
# short_videos=pad: only single-frame files are skipped (the published rule)
PAD_MIN_FRAMES = 2


def video_settings(pc) -> dict:
    """The preprocess settings that change a stored video or its row (re-use needs them equal)."""
    return {k: getattr(pc, k) for k in VIDEO_SETTINGS}


def read_min_frames(pc) -> int:
    """Fewest frames a decoded file may have: ``min_frames`` with ``short_videos=skip``, else
    2 (only single-frame files are skipped; shorter videos are zero-padded at load)."""
    return pc.min_frames if pc.short_videos == "skip" else min(pc.min_frames, PAD_MIN_FRAMES)


def _previous(out: Path, settings: dict) -> dict[str, dict]:
    """Rows of an earlier run in ``out`` made with the same video settings, by video_id
    (for idempotent re-runs); empty when the settings changed (everything is redone)."""
    path = out / "manifest.csv"
    try:
        old = json.loads((out / "dataset.json").read_text()).get("video_settings")
    except (OSError, ValueError, AttributeError):
        return {}
    if isinstance(old, dict):
        old = {**LEGACY_SETTINGS, **old}
    if not path.exists() or old != settings:
        return {}
    try:
        df = public_vendor_columns(read_csv(path, dtype=str, keep_default_na=False))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return {}
    cols = list(MANIFEST_COLUMNS) + list(OPTIONAL_COLUMNS)
    if not set(cols) <= set(df.columns):
        return {}  # an older manifest without the DICOM fields: redone once
    out_rows = {}
    for rec in df[cols].to_dict("records"):
        for k in ("n_frames", "height", "width", "channels"):
            rec[k] = int(rec[k])
        rec["fps"] = float(rec["fps"])
        rec["study_year"] = int(rec["study_year"]) if rec["study_year"] else None
        rec.update({c: rec[c] or None for c in OPTIONAL_COLUMNS})
        out_rows[rec["video_id"]] = rec
    return out_rows


SYNTH_SALT = "echoclr"  # archives made by `echoclr synth` hold no patient: reproducible demo ids
# Rows and splits are ordered by the hashed ids, i.e. keyed by the dataset's secret salt: a
# cohort list (the original ids) tells nothing about row order or splits (issue 23). They were
# ordered by hashes under the public constant "echoclr" (SYNTH_SALT), so a synthetic archive's
# manifest and splits are what they were. dataset.json records the rule.
ROW_ORDER = "salted_ids"


def order_note(before: dict, salt: str) -> list[str]:
    """The note for a re-run into a dataset whose rows and splits came from the public order."""
    if not before.get("status") or before.get("row_order") == ROW_ORDER or salt == SYNTH_SALT:
        return []
    return ["rows and splits are now keyed by this dataset's secret salt (the earlier order "
            "could be rebuilt from a list of the cohort's ids): the splits differ from the "
            "earlier run's, so retrain the runs made on them (their test patients may have "
            "been trained on)"]  # fmt: skip


# What a user archive takes from the published settings (the code defaults) whatever the profile:
# a profile's frame size, split and resize are for the embedded demo archive only.
ARCHIVE_KEYS = {  # key -> how to set it
    "size": "--size",
    "split": "--set preprocess.split=...",
    "resize": "--set preprocess.resize=...",
}


def _shown(key: str, value: object) -> str:
    if key == "split":
        return "split " + "/".join(f"{100 * float(v):g}" for v in value)  # type: ignore[union-attr]
    if key == "resize":
        return f"resize {value}"
    return f"frame size {value} px"


def user_archive_settings(cfg: Config, explicit: Collection[str]) -> tuple[Config, list[str]]:
    """``cfg`` with the published frame size, split and resize (the code defaults) for a user archive
    (``preprocess.input`` set), except the keys the user set (``explicit``: dotted config keys
    given by a flag, ``--set`` or a ``--config`` file). The profile's values apply only to the
    embedded demo archive. Returns the config and one line saying what changed (none: [])."""
    pc = cfg.preprocess
    if pc.input is None:
        return cfg, []
    paper = type(pc)()
    update = {
        k: getattr(paper, k)
        for k in ARCHIVE_KEYS
        if f"preprocess.{k}" not in explicit and getattr(pc, k) != getattr(paper, k)
    }
    if not update:
        return cfg, []
    said = ", ".join(_shown(k, v) for k, v in update.items())
    was = ", ".join(_shown(k, getattr(pc, k)) for k in update)
    verb = "applies" if len(update) == 1 else "apply"
    how = " or ".join(ARCHIVE_KEYS[k] for k in update)
    note = (f"{said} (paper) for this archive: the {cfg.profile} profile's {was} {verb} only "
            f"to the embedded demo archive ({how} to choose)")  # fmt: skip
    return cfg.model_copy(update={"preprocess": pc.model_copy(update=update)}), [note]


def preprocess(
    cfg: Config,
    input_dir: Path | None,
    output_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> PreprocessResult:
    """Raw archive -> dataset dir. ``progress(done, total)`` is called after every file.
    One writer per dataset: ``output_dir/.lock`` is held for the whole run (writer_lock).

    ``input_dir`` None: ``preprocess.input``, else the embedded synthetic archive in
    ``paths.raw`` (generated there first when missing). Frame size and split are ``cfg``'s as
    given (the CLI gives a user archive the published ones first: :func:`user_archive_settings`).
    Raises UserError for unusable input
    (before any write: missing decoders, an input with no file to decode; after the outputs are
    written, with dataset.json marked ``failed``: no usable video, too many failures, label
    issues without ``allow_label_issues``, leakage in given splits).
    """
    with dataset_lock(Path(output_dir)):
        return _preprocess(cfg, input_dir, output_dir, progress)


def _preprocess(
    cfg: Config, input_dir: Path | None, output_dir: Path, progress
) -> PreprocessResult:
    t0 = datetime.now(UTC)
    pc = cfg.preprocess
    root = resolve_input(cfg, input_dir, progress)
    notes: list[str] = []
    out = Path(output_dir)
    _check_output(out, pc.overwrite)
    refuse_legacy(out)
    given = privacy.given_salt(pc.salt)  # flag or config file, else $ECHOCLR_SALT
    if given is None and (root / "synth.json").exists() and pc.layout in ("auto", "synth"):
        given = SYNTH_SALT  # synthetic archive (no patient): the demo's results stay reproducible
    salt, salt_source = privacy.resolve_salt(out, given)
    inv = layouts.discover(pc, root, pc.layout, pc.labels, exclude=[out],
                           external_root=pc.external_input, salt=salt)  # fmt: skip
    if not inv.items:
        why = Counter(r["reason"] for r in inv.skipped)
        raise UserError(
            f"no file to decode in {root} ({len(inv.skipped)} other file(s): {dict(why)}); "
            "nothing was written",
            fix="point --input at the archive (DICOM/video files, or a known layout)",
        )
    settings = video_settings(pc)
    journal = Journal(out, run_key(salt, settings, inv.key)) if out.is_dir() else None
    done, tasks, fps_ = partition_items(inv, journal, out, pc.overwrite)
    dicoms = [it.file for _, it in tasks if it.kind == "dicom"]
    _, undecodable = readers.check_decoders(dicoms)  # raises before any work when one is missing

    try:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    if journal is None:
        journal = Journal(out, run_key(salt, settings, inv.key))
    previous = _previous(out, settings) if not journal.entries else {}
    for _, it in tasks:  # only the rows of files to check are sent to the workers
        row = journal.previous_row(it)
        if row is not None:
            previous[row["video_id"]] = row
    wanted = {hash_id(salt, "video", it.rel) for _, it in tasks}
    previous = {k: v for k, v in previous.items() if k in wanted}
    rng = np.random.default_rng(pc.split_seed)
    pick = rng.permutation(len(inv.items))[: 2 * PREVIEW_VIDEOS]
    ctx = worker.WorkerContext(
        out_dir=str(out), salt=salt,
        opts=ReadOptions(pc.max_frames, read_min_frames(pc), pc.min_fps, pc.fallback_fps,
                         pc.max_pixels),
        size=pc.size, color=pc.color, skip_doppler=pc.skip_color_doppler,
        use_regions=pc.use_dicom_regions, overwrite=pc.overwrite,
        previous=previous,
        undecodable=undecodable, view_excluded=inv.view_excluded, key=inv.key,
        preview={inv.items[i].rel for i in pick}, resize=pc.resize,
    )  # fmt: skip
    privacy.store_salt(out, salt, salt_source)
    privacy.write_private_json(out, privacy.RUN_FILE, {
        "input": str(root), "labels": str(pc.labels) if pc.labels else None,
        "external_input": str(pc.external_input) if pc.external_input else None,
    })  # fmt: skip
    meta = {"format": outputs.FORMAT, "status": "running", "reason": "preprocess did not finish",
            "label_columns": list(inv.label_columns), "size": pc.size,
            "created": t0.isoformat(timespec="seconds"), "layout": inv.layout,
            "video_settings": settings, "config": outputs.public_config(pc),
            "decoders": dict(readers.REFERENCE_DECODERS), "row_order": ROW_ORDER}  # fmt: skip
    if inv.categorical_columns:
        meta["categorical_columns"] = list(inv.categorical_columns)
    before = dataset_json(out)
    notes += order_note(before, salt)
    atomic_write_json(out / "dataset.json", meta)
    journal.open()
    try:
        rows, skipped, tiles, ids, seen_ids, sector_sources, n_reused = process_items(
            inv, ctx, resolve_workers(pc.workers), out, notes, progress, done, tasks, fps_, journal
        )
        journal.close(keep={it.rel for it in inv.items})
    except BaseException:
        with contextlib.suppress(Exception):
            journal.close()
        # The earlier dataset is still whole (its manifest is rewritten only at the end, and its
        # videos were rewritten with the same settings): give it its status back.
        if before.get("video_settings") == settings:
            with contextlib.suppress(Exception):
                atomic_write_json(out / "dataset.json", before)
        raise
    total = len(inv.items)

    df = join_meta(pd.DataFrame(rows), inv, pc)
    labels = list(inv.label_columns)
    if not df.empty:
        df["_pkey"], df["_skey"] = df["patient_id"], df["study_id"]  # keyed by the salt
        df["split"] = assign_video_splits(df, labels, pc)
        df = df.sort_values(["split", "_pkey", "_skey", "_index"], key=split_order)
    manifest = manifest_frame(df, labels, inv.categorical_columns)
    n_short = int((manifest["n_frames"] < pc.min_frames).sum()) if len(manifest) else 0
    if n_short:
        notes.insert(0, f"{n_short} video(s) shorter than {pc.min_frames} frames kept; their "
                        "clips are zero-padded at load (preprocess.short_videos=pad)")  # fmt: skip
    matched = set(df["_match"].dropna()) if "_match" in df else set()  # hashed label keys
    issues = inv.label_issues + outputs.unmatched_labels(inv, manifest, seen_ids, matched)
    key_error = None
    if inv.label_key and "_match" in df:
        found, key_error = match_labels(inv.label_key, inv.label_rows,
                                        df[["study_id", "_match", "_match_shape"]],
                                        seen_ids | inv.view_excluded)  # fmt: skip
        issues += found
        if key_error is not None and pc.allow_label_issues:
            notes.insert(0, f"labels: {key_error.message} (accepted: --allow-label-issues)")
            key_error = None
    no_modality = df.get("_modality_missing", pd.Series(dtype=bool))
    n_no_modality = int(no_modality.fillna(False).astype(bool).sum())
    if n_no_modality:
        notes.insert(0, f"{n_no_modality} DICOM file(s) without a Modality (0008,0060) "
                        "accepted as ultrasound")  # fmt: skip

    files = {it.rel: it.file for it in inv.items}
    paths: dict[str, Path] = {}
    paths["skipped"], skipped_df = outputs.write_skipped(out, skipped, salt, root, files)
    refs = {it.rel: privacy.file_ref(salt, it.rel) for it in inv.items}
    notes = [outputs.public_note(n, refs, root) for n in notes]
    reasons = Counter(skipped_df["reason"])
    n_fail = sum(n for r, n in reasons.items() if r in readers.FAILURE_REASONS)
    n_inputs = total + len(inv.skipped)
    leak = None
    if not manifest.empty:
        try:
            check_leakage(manifest, source=f"splits for {out}")
        except UserError as e:
            leak = e
    if not manifest.empty and leak is None:
        paths["manifest"] = out / "manifest.csv"
        atomic_write_csv(paths["manifest"], manifest)
    paths["id_map"] = privacy.write_private_csv(
        out, privacy.ID_MAP, outputs.id_map_frame(ids, manifest)
    )
    label_report = None
    if issues or inv.label_rows or labels:
        label_report = label_issues_report(issues, pc.allow_label_issues)
        paths["labels_report"] = out / "labels_report.json"
        atomic_write_json(paths["labels_report"], label_report)
        privacy.write_private_csv(out, privacy.LABEL_ROWS, private_issue_rows(issues))
        notes = issue_lines(issues) + notes
    paths.update(outputs.write_previews(out, tiles))

    failure = outputs.failure(manifest, n_fail, n_inputs, reasons,
                              None if key_error else label_report, leak, pc, paths)  # fmt: skip
    if failure is None and key_error is not None:  # the label file matches nothing
        failure = UserError(f"{key_error.message}; all outputs were written and the dataset is "
                            "marked failed", fix=key_error.fix)  # fmt: skip
    meta.update(status="failed" if failure else "ok",
                reason=failure.message if failure else None,
                n_videos=len(manifest), n_inputs=n_inputs)  # fmt: skip
    meta["modality_missing"] = n_no_modality  # stored DICOMs without Modality (accepted as US)
    paths["dataset"] = out / "dataset.json"
    result = PreprocessResult(
        output_dir=out, input_dir=root, layout=inv.layout, n_inputs=n_inputs,
        n_videos=len(manifest), n_reused=n_reused,
        n_skipped=int(sum(reasons.values())),
        n_failures=int(n_fail), skipped_by_reason=dict(sorted(reasons.items())),
        split_sizes=outputs.split_sizes(manifest), prevalence=outputs.prevalence(manifest, labels),
        n_decoded=len(tasks), label_columns=labels, frames=outputs.stats(manifest.get("n_frames", pd.Series(dtype=float))),
        fps=outputs.stats(manifest.get("fps", pd.Series(dtype=float))),
        fps_source=dict(Counter(manifest.get("fps_source", []))),
        channels={str(k): int(v) for k, v in Counter(manifest.get("channels", [])).items()},
        warnings=notes[:MAX_WARNINGS], paths=paths,
        seconds=round((datetime.now(UTC) - t0).total_seconds(), 2),
        status=meta["status"], reason=meta["reason"], label_report=label_report,
    )  # fmt: skip
    paths["report"] = out / "report.json"
    report = result.to_dict()
    report.update(n_warnings=len(notes), sector_source=dict(sector_sources), n_short=n_short,
                  resize=pc.resize, short_videos=pc.short_videos,
                  failure_frac=n_fail / max(1, n_inputs), max_skipped_frac=pc.max_skipped_frac)  # fmt: skip
    report["modality_missing"] = n_no_modality
    atomic_write_json(paths["report"], report)
    atomic_write_json(paths["dataset"], meta)
    if failure:
        raise failure
    return result
