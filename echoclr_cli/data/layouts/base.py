"""What every dataset layout shares: the :class:`Inventory` of :class:`Item` files, walking an
input tree, and which files are never media."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from echoclr_cli.data.bounds import (
    LOOP_DETAIL,
    OUTSIDE_DETAIL,
    file_problem,
    inside,
    not_regular,
    resolve_link,
)
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


def _walk(
    root: Path, exclude: Iterable[Path], follow_external: bool = False
) -> tuple[list[Path], list[dict]]:
    """Every file under ``root`` (sorted) except ``exclude``, and skip rows for what is not read
    (never a silent drop, FAULTS.md 44):

    - hidden files and folders: ``not_media`` (hidden folders are not read);
    - FIFOs, devices, sockets, also behind a link: ``not_regular_file`` (never opened);
    - links (file or folder) are followed once: the real tree is read first, then each link;
      a link to a folder above it or to itself is ``symlink_loop``, a second path to a file or
      folder already read is ``duplicate_link``, a broken link ``missing_file``, and a link
      leaving ``root`` is ``outside_archive`` unless ``follow_external``.

    Files reached through a link keep the link's path (``root/LINK/...``)."""
    excl = {os.path.realpath(p) for p in exclude}
    top = os.path.realpath(root)
    out: list[Path] = []
    skipped: list[dict] = []
    links: list[Path] = []
    seen: set[str] = set()  # real paths of the folders and files read

    def skip(path: Path, reason: str, detail: str, folder: bool = False) -> None:
        rel = path.relative_to(root).as_posix() + ("/" if folder else "")
        skipped.append({"file": rel, "reason": reason, "detail": detail})

    def scan(folder: Path) -> None:
        seen.add(os.path.realpath(folder))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skip(folder, "missing_file", f"folder not readable ({e.strerror})", True)
            return
        folders = []  # files first, then sub-folders (os.walk's order)
        for e in entries:
            full = Path(folder) / e.name
            if os.path.realpath(full) in excl:
                continue
            if e.is_symlink():
                links.append(full)
            elif e.is_dir(follow_symlinks=False):
                if e.name.startswith("."):
                    skip(full, "not_media", "hidden folder (not read)", True)
                else:
                    folders.append(full)
            else:
                add_file(full, e.stat(follow_symlinks=False).st_mode)
        for sub in folders:
            scan(sub)

    def add_file(full: Path, mode: int) -> None:
        what = not_regular(mode)
        if what:
            skip(full, "not_regular_file", f"{what}, not a regular file (never opened)")
        else:
            seen.add(os.path.realpath(full))
            out.append(full)

    scan(Path(root))
    for link in links:  # grows while linked folders are read
        real, problem = resolve_link(link)
        if problem:
            skip(link, *problem)
            continue
        mode = os.stat(real).st_mode
        if not stat.S_ISDIR(mode) and not_regular(mode):
            add_file(link, mode)  # a link to /dev/zero: not_regular_file before any location
        elif not follow_external and not inside(real, top):
            skip(link, "outside_archive", OUTSIDE_DETAIL)
        elif stat.S_ISDIR(mode) and inside(os.path.realpath(link.parent), real):
            skip(link, "symlink_loop", LOOP_DETAIL)
        elif real in seen:
            what = "folder" if stat.S_ISDIR(mode) else "file"
            skip(link, "duplicate_link", f"a second path to a {what} read at its own path "
                                         "(read once)")  # fmt: skip
        elif stat.S_ISDIR(mode):
            scan(link)
        else:
            add_file(link, mode)
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


def drop_unreadable(inv: Inventory, root: Path, follow_external: bool) -> None:
    """Move the items that must not be opened (bounds.file_problem: not a regular file, a link
    leaving ``root``, a loop, a broken link) to ``inv.skipped``, whatever layout listed them."""
    keep = []
    for it in inv.items:
        problem = file_problem(it.file, root, follow_external)
        if problem:
            inv.skipped.append({"file": it.rel, "reason": problem[0], "detail": problem[1]})
        else:
            keep.append(it)
    inv.items = keep
