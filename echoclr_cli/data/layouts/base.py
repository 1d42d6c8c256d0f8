"""What every dataset layout shares: the :class:`Inventory` of :class:`Item` files, walking an
input tree, and which files are never media."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from echoclr_cli.data.label_file import LabelRow

VIDEO_EXTS = {".avi", ".mp4", ".mov", ".m4v", ".mkv", ".wmv", ".mpg", ".mpeg"}
# Files in an input tree that are never media (a DICOM may have any extension or none).
IGNORED_EXTS = {
    ".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf", ".log",
    ".py", ".npy", ".npz", ".xlsx", ".xls", ".zip", ".gz", ".tar", ".ini", ".cfg",
}  # fmt: skip
# Files every export or desktop leaves beside the images, recognised by name and never opened:
# the export's DICOMDIR index (a media directory, not an image) and OS thumbnail/folder files.
# They are listed as not_media, so a hospital export's DICOMDIR is not counted as a failed file.
SYSTEM_FILES = {"dicomdir": "DICOMDIR (the export's index, not an image)",
                "thumbs.db": "system file", "ehthumbs.db": "system file",
                "desktop.ini": "system file"}  # fmt: skip


# --------------------------------------------------------------------------- inventory
@dataclass
class Item:
    """One input file. ``rel`` is the path relative to the input dir (the video id's source).

    study_id / patient_id: original ids known from the layout (None: read from the DICOM header
    or taken from the path). meta: what the layout knows: 'split', 'study_year', 'external',
    label columns (0/1/NaN). native: already at the published frame geometry (the echoclr
    layout's 112 x 112 AVIs): masked only, never cropped (``preprocess.resize`` does not apply)."""

    file: Path
    rel: str
    kind: str  # "dicom" | "video"
    study_id: str | None = None
    patient_id: str | None = None
    meta: dict = field(default_factory=dict)
    native: bool = False


@dataclass
class Inventory:
    """Everything discovered in an input dir before decoding.

    table: with --labels, label rows keyed by hashed id (``key``, the hash kind: 'study',
    'patient', 'accession' or 'date_patient'; labels.find_label_key); items
    look their meta up there after decoding. skipped: (file, reason, detail) found before
    decoding (missing, unlisted, not media, view filter); ``file`` is the original relative path
    (private). label_issues: labels.label_issue records; label_rows: label-file rows to match
    against the stored videos once decoded; known_ids: hashed ids of files the layout lists."""

    layout: str
    root: Path
    items: list[Item]
    label_columns: list[str]
    skipped: list[dict] = field(default_factory=list)
    table: dict[str, dict] = field(default_factory=dict)
    key: str = "study"
    view_excluded: set[str] = field(default_factory=set)
    label_issues: list[dict] = field(default_factory=list)
    label_rows: list[LabelRow] = field(default_factory=list)
    known_ids: set[str] = field(default_factory=set)
    categorical_columns: list[str] = field(default_factory=list)  # string columns (e.g. view)
    aliases: tuple[str, dict[str, list[str]]] | None = None  # label-table id -> study ids
    label_key: dict | None = None  # --labels: its key column, DICOM tag, counts, shapes (public)


def _walk(root: Path, exclude: Iterable[Path]) -> tuple[list[Path], list[dict]]:
    """Every file under ``root`` (sorted) except ``exclude``; hidden files and folders are not
    read but listed as skipped ``not_media`` (never a silent drop)."""
    excl = {os.path.realpath(p) for p in exclude}
    out, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.realpath(full) in excl:
                continue
            if d.startswith("."):
                rel = Path(full).relative_to(root).as_posix()
                skipped.append({"file": rel + "/", "reason": "not_media",
                                "detail": "hidden folder (not read)"})  # fmt: skip
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if os.path.realpath(p) not in excl:
                out.append(p)
    return out, skipped


def _not_media(path: Path) -> str | None:
    """Why ``path`` is not read as media (hidden, or an extension that is never media)."""
    if path.name.startswith("."):
        return "hidden file"
    if path.name.lower() in SYSTEM_FILES:
        return f"{SYSTEM_FILES[path.name.lower()]} ({path.name})"
    if path.suffix.lower() in IGNORED_EXTS:
        return f"not a media file ({path.suffix.lower()})"
    return None


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTS else "dicom"
