"""Read DICOM and video files into frames + metadata, and recognise dataset layouts.

Readers raise :class:`SkipVideo` with a reason code (the ``reason`` column of skipped.csv):
``invalid_dicom, no_pixel_data, not_cine, frame_count_mismatch, no_decodable_frames,
too_few_frames, low_fps, missing_decoder, decode_error, missing_file``. Layout adapters
(:func:`discover`) turn an input dir into an :class:`Inventory` of files with what the layout
already knows (ids, split, labels, year).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from echoclr_cli.data.manifest import normalise_split, parse_labels
from echoclr_cli.errors import UserError

VIDEO_EXTS = {".avi", ".mp4", ".mov", ".m4v", ".mkv", ".wmv", ".mpg", ".mpeg"}
# Files in an input tree that are never media (a DICOM may have any extension or none).
IGNORED_EXTS = {
    ".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf", ".log",
    ".py", ".npy", ".npz", ".xlsx", ".xls", ".zip", ".gz", ".tar", ".ini", ".cfg",
}  # fmt: skip
LAYOUTS = ("dicom", "video", "echoclr", "echonet", "synth")

# Reasons that mean "a file that should have worked did not" (count towards max_skipped_frac);
# the others are deliberate filters (stills, reports, Doppler, low fps, short clips, view).
FAILURE_REASONS = {
    "invalid_dicom", "frame_count_mismatch", "no_decodable_frames", "decode_error",
    "missing_file", "missing_decoder", "no_sector",
}  # fmt: skip

DICOMDIR_UID = "1.2.840.10008.1.3.10"
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
}  # fmt: skip


class SkipVideo(Exception):
    """An input that is not used: ``reason`` is the skipped.csv code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ReadOptions:
    max_frames: int = 100
    min_frames: int = 16
    min_fps: float = 25.0
    fallback_fps: float = 30.0


@dataclass
class RawVideo:
    """Decoded frames and metadata of one input file.

    frames: uint8 (T,H,W) gray or (T,H,W,3) RGB, T <= max_frames. n_total: frames in the file.
    regions: 2D ultrasound regions (x0, y0, x1, y1 inclusive) from the DICOM header.
    """

    frames: np.ndarray
    fps: float
    fps_source: str
    n_total: int
    patient_id: str | None = None
    study_id: str | None = None
    study_year: int | None = None
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file bytes (first 16 hex digits): the manifest's ``source_hash``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def hash_id(salt: str, kind: str, value: str) -> str:
    """Salted, de-identifying id: 'p'/'s'/'v' + 15 hex digits (never parses as a number)."""
    digest = hashlib.sha256(f"{salt}\x00{kind}\x00{value}".encode()).hexdigest()
    return kind[0] + digest[:15]


# --------------------------------------------------------------------------- DICOM
def transfer_syntax(path: Path) -> str | None:
    """Transfer syntax UID from the file meta (None when not readable as DICOM)."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
        return str(meta.TransferSyntaxUID) if "TransferSyntaxUID" in meta else None
    except Exception:
        return None


# Package that provides a pydicom decoder, by transfer-syntax family.
_DECODER_PACKAGES = [
    (("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
      "1.2.840.10008.1.2.4.70"), "pylibjpeg pylibjpeg-libjpeg"),
    (("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "pylibjpeg pylibjpeg-libjpeg"),
    (("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
      "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"), "pylibjpeg pylibjpeg-openjpeg"),
    (("1.2.840.10008.1.2.5",), "pylibjpeg pylibjpeg-rle"),
]  # fmt: skip


def decoder_package(uid: str) -> str | None:
    """pip package(s) that add a decoder for ``uid``; None when no pydicom plugin exists."""
    for uids, pkg in _DECODER_PACKAGES:
        if uid in uids:
            return pkg
    return None


def decoder_available(uid: str) -> bool:
    """Whether pydicom can decode pixel data in transfer syntax ``uid`` in this environment."""
    if uid in NATIVE_SYNTAXES:
        return True
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def check_decoders(files: Iterable[Path]) -> tuple[dict[str, int], set[str]]:
    """Preflight before decoding: read only the file meta of every candidate DICOM.

    Raises UserError naming the transfer syntax, the file count and the package to install
    when an installable decoder is missing. Returns (count by transfer syntax, syntaxes that no
    pydicom plugin decodes at all, e.g. MPEG video; those files are skipped as missing_decoder).
    """
    counts = Counter(uid for f in files if (uid := transfer_syntax(f)))
    missing, undecodable = [], set()
    for uid, n in sorted(counts.items()):
        if decoder_available(uid):
            continue
        pkg = decoder_package(uid)
        if pkg is None:
            undecodable.add(uid)
        else:
            missing.append((uid, n, pkg))
    if missing:
        parts = [f"{n} file(s) in {uid_name(uid)}" for uid, n, pkg in missing]
        pkgs = sorted({p for _, _, pkg in missing for p in pkg.split()})
        raise UserError(
            "no pixel decoder installed for " + "; ".join(parts) + "; nothing was processed",
            fix=f"pip install {' '.join(pkgs)}",
        )
    return dict(counts), undecodable


def _dicom_fps(ds, fallback: float) -> tuple[float, str]:
    """CineRate, else 1000/FrameTime, else mean FrameTimeVector, else the fallback."""

    def num(v) -> float | None:
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) and x > 0 else None

    if (x := num(ds.get("CineRate"))) is not None:
        return x, "CineRate"
    if (x := num(ds.get("FrameTime"))) is not None:
        return 1000.0 / x, "FrameTime"
    vec = ds.get("FrameTimeVector")
    if vec is not None:
        vals = [v for v in (num(t) for t in (vec if isinstance(vec, Iterable) else [vec])) if v]
        if vals:  # the first entry is 0 by definition; num() drops it
            return 1000.0 / float(np.mean(vals)), "FrameTimeVector"
    return float(fallback), "fallback"


def _dicom_regions(ds) -> list[tuple[int, int, int, int]]:
    out = []
    for r in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            if int(r.get("RegionSpatialFormat", 1)) != 1:  # 1 = 2D tissue/flow image
                continue
            out.append(
                (int(r.RegionLocationMinX0), int(r.RegionLocationMinY0),
                 int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1))
            )  # fmt: skip
        except (AttributeError, TypeError, ValueError):
            continue
    return out


def _year(value) -> int | None:
    m = re.match(r"\s*(\d{4})", str(value or ""))
    return int(m.group(1)) if m and 1900 <= int(m.group(1)) <= 2200 else None


def _declared_frames(ds) -> int | None:
    v = ds.get("NumberOfFrames")
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _actual_frames(ds) -> tuple[int, str]:
    """Frames the pixel data really holds (native: by byte length; encapsulated: by offsets or
    fragments). Returns (count, how)."""
    data = ds.PixelData
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        bits = int(ds.get("BitsAllocated", 8))
        per = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits
        frame_bytes = per // 8 if bits != 1 else math.ceil(per / 8)
        return (len(data) // frame_bytes if frame_bytes else 0), "bytes"
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    offsets = parse_basic_offsets(data)
    if len(offsets) > 1:
        return len(offsets), "offsets"
    n_frag, _ = parse_fragments(data)
    return n_frag, "fragments"


def _to_uint8(frames: np.ndarray, ds) -> np.ndarray:
    """Any integer pixel data -> uint8: window (WindowCenter/Width) if given, else actual range."""
    if frames.dtype == np.uint8:
        return frames
    f = frames.astype(np.float32)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        c = float(
            center[0] if isinstance(center, Iterable) and not isinstance(center, str) else center
        )
        w = float(width[0] if isinstance(width, Iterable) and not isinstance(width, str) else width)
        lo, hi = c - w / 2.0, c + w / 2.0
        ok = w > 1
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        lo, hi = float(f.min()), float(f.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((f - lo) * scale, 0, 255).round().astype(np.uint8)


def read_dicom(path: Path, opts: ReadOptions, undecodable: set[str] = frozenset()) -> RawVideo:
    """Decode a cine DICOM (any transfer syntax pydicom + pylibjpeg decode) to uint8 frames.

    Colour: YBR is converted to RGB by pydicom, palette colour through its LUT, MONOCHROME1 is
    inverted; 16-bit data is scaled to uint8 by its window or actual range. Only the first
    ``max_frames`` frames are decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, iter_pixels

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise SkipVideo("invalid_dicom", f"not a DICOM file ({e})") from None
    except Exception as e:  # truncated header / pixel data: tell which
        try:
            head = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            raise SkipVideo("invalid_dicom", f"unreadable: {type(e).__name__}: {e}") from None
        if "Rows" in head:
            raise SkipVideo("frame_count_mismatch", f"pixel data truncated ({e})") from None
        raise SkipVideo("invalid_dicom", f"unreadable: {type(e).__name__}: {e}") from None
    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop == DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        raise SkipVideo("invalid_dicom", "DICOMDIR (media directory), not an image")
    if "PixelData" not in ds:
        if "Rows" in ds:  # image attributes, then the file ends: cut before its pixel data
            raise SkipVideo(
                "frame_count_mismatch", "image header without pixel data (truncated file?)"
            )
        if "SOPClassUID" not in ds:
            raise SkipVideo("invalid_dicom", "header ends early (truncated file?)")
        what = ds.get("Modality", "") or sop or "object"
        raise SkipVideo("no_pixel_data", f"no pixel data ({what})")
    if meta is None or "TransferSyntaxUID" not in meta:
        raise SkipVideo("invalid_dicom", "no transfer syntax in the file meta")
    uid = str(meta.TransferSyntaxUID)
    if uid in undecodable or not decoder_available(uid):
        pkg = decoder_package(uid)
        hint = f"; pip install {pkg}" if pkg else "; no pydicom decoder exists (convert the file)"
        raise SkipVideo("missing_decoder", uid_name(uid) + hint)
    for tag in ("Rows", "Columns"):
        if tag not in ds:
            raise SkipVideo("invalid_dicom", f"pixel data without {tag}")

    declared = _declared_frames(ds)
    try:
        actual, how = _actual_frames(ds)
    except Exception as e:
        raise SkipVideo("frame_count_mismatch", f"pixel data unreadable ({e})") from None
    if declared is None:
        if actual <= 1:
            raise SkipVideo("not_cine", "single frame (still image)")
        raise SkipVideo(
            "frame_count_mismatch", f"NumberOfFrames missing, pixel data holds {actual} ({how})"
        )
    if declared <= 1:
        raise SkipVideo("not_cine", f"NumberOfFrames={declared} (still image)")
    if (how == "fragments" and actual < declared) or (how != "fragments" and actual != declared):
        raise SkipVideo(
            "frame_count_mismatch", f"NumberOfFrames={declared}, pixel data holds {actual} ({how})"
        )

    fps, fps_source = _dicom_fps(ds, opts.fallback_fps)
    if fps < opts.min_fps:
        raise SkipVideo("low_fps", f"{fps:.1f} fps from {fps_source} < {opts.min_fps:g}")
    if declared < opts.min_frames:
        raise SkipVideo("too_few_frames", f"{declared} frames < {opts.min_frames}")

    keep = min(declared, opts.max_frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    frames = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for arr in iter_pixels(ds, indices=range(keep)):
                if photometric == "PALETTE COLOR":
                    arr = apply_color_lut(arr, ds)
                frames.append(arr)
    except Exception as e:
        if frames:
            raise SkipVideo(
                "frame_count_mismatch", f"frame {len(frames) + 1} of {declared} not decodable ({e})"
            ) from None
        raise SkipVideo("decode_error", f"{uid_name(uid)}: {type(e).__name__}: {e}") from None
    if not frames:
        raise SkipVideo("no_decodable_frames", "no frame decoded")
    video = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    if video.ndim == 4 and video.shape[-1] == 1:
        video = video[..., 0]
    if video.ndim == 4 and video.shape[-1] != 3:
        raise SkipVideo("decode_error", f"unsupported samples per pixel {video.shape[-1]}")
    if photometric == "PALETTE COLOR" and video.dtype != np.uint8:
        video = (video.astype(np.float32) / 257.0).round().astype(np.uint8)  # 16-bit LUT entries
    video = _to_uint8(video, ds)
    if photometric == "MONOCHROME1":
        video = 255 - video

    study = ds.get("StudyInstanceUID") or ds.get("AccessionNumber") or None
    year = (
        _year(ds.get("StudyDate"))
        or _year(ds.get("SeriesDate"))
        or _year(ds.get("AcquisitionDate"))
    )
    return RawVideo(
        frames=video,
        fps=fps,
        fps_source=fps_source,
        n_total=declared,
        patient_id=str(ds.get("PatientID") or "").strip() or None,
        study_id=str(study).strip() if study else None,
        study_year=year,
        regions=_dicom_regions(ds),
    )


# --------------------------------------------------------------------------- video files
def read_video(path: Path, opts: ReadOptions) -> RawVideo:
    """Decode AVI/MP4 with OpenCV; frames are counted as decoded (the header count is not
    trusted). (T,H,W,3) RGB uint8, T <= max_frames."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SkipVideo("no_decodable_frames", "OpenCV cannot open the file")
        fps = cap.get(cv2.CAP_PROP_FPS)
        header = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if math.isfinite(fps) and 0 < fps < 1000:
            fps_source = "container"
        else:
            fps, fps_source = float(opts.fallback_fps), "fallback"
        if fps < opts.min_fps:
            raise SkipVideo("low_fps", f"{fps:.1f} fps from {fps_source} < {opts.min_fps:g}")
        frames, ended = [], False
        while len(frames) < opts.max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                ended = True
                break
            if frames and frame.shape != frames[0].shape:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame)
    finally:
        cap.release()
    if not frames:
        raise SkipVideo("no_decodable_frames", "no frame could be decoded")
    if len(frames) < opts.min_frames:
        hdr = f" (header says {int(header)})" if header and header > 0 else ""
        raise SkipVideo("too_few_frames", f"{len(frames)} decoded frames < {opts.min_frames}{hdr}")
    notes = []
    if ended and header and math.isfinite(header) and int(header) > len(frames):
        notes.append(f"header says {int(header)} frames, {len(frames)} decodable (truncated?)")
    video = np.stack(frames)  # (T, H, W, 3) RGB, or (T, H, W) from a gray decoder
    return RawVideo(
        frames=video, fps=float(fps), fps_source=fps_source, n_total=len(frames), warnings=notes
    )


# --------------------------------------------------------------------------- labels
_EXPR = re.compile(r"^\s*(?P<col>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<val>.*?)\s*$")
_MISSING = {"", "nan", "none", "na", "n/a", "null"}


def map_label(df: pd.DataFrame, expr: str, source: str) -> tuple[pd.Series, pd.Series]:
    """Evaluate a ``preprocess.label_map`` expression on a label table.

    ``'col'`` (values 0/1), ``'col==value'`` / ``'col!=value'`` (text or number; other non-empty
    values -> the opposite class), ``'col>=x'`` / ``<=, >, <`` (numeric). Empty -> unknown.
    Returns (values 0/1/NaN, bad) where bad marks values that cannot be mapped.
    """
    m = _EXPR.match(expr)
    col, op, val = (m["col"], m["op"], m["val"]) if m else (expr.strip(), None, None)
    if col not in df.columns:
        raise UserError(
            f"{source}: label_map expression '{expr}' names column '{col}', which is not in "
            f"{list(df.columns)}",
            fix="fix preprocess.label_map (output: 'column', 'column==value' or 'column>=x')",
        )
    raw = df[col].astype("string").str.strip()
    missing = raw.isna() | raw.str.lower().isin(_MISSING)
    if op is None:
        return parse_labels(df[col])
    if op in ("==", "!="):
        try:
            target = float(val)
            num = pd.to_numeric(raw, errors="coerce")
            hit = num == target
            bad = ~missing & num.isna()
        except ValueError:
            hit = raw.str.lower() == val.strip("'\"").lower()
            bad = pd.Series(False, index=df.index)
        hit = hit if op == "==" else ~hit
    else:
        try:
            target = float(val)
        except ValueError:
            raise UserError(
                f"{source}: label_map expression '{expr}' compares with a non-number",
                fix="write e.g. 'EF<50'",
            ) from None
        num = pd.to_numeric(raw, errors="coerce")
        hit = {">=": num >= target, "<=": num <= target, ">": num > target, "<": num < target}[op]
        bad = ~missing & num.isna()
    values = hit.astype(float).where(~missing & ~bad)
    return values.astype(float), (bad & ~missing).fillna(False).astype(bool)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV as strings (ids keep leading zeros; empty cells stay empty strings)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})", fix="check the file") from None
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


# --------------------------------------------------------------------------- inventory
@dataclass
class Item:
    """One input file. ``rel`` is the path relative to the input dir (the video id's source).

    study_id / patient_id: original ids known from the layout (None: read from the DICOM header
    or taken from the path). meta: what the layout knows: 'split', 'study_year', 'external',
    label columns (0/1/NaN)."""

    file: Path
    rel: str
    kind: str  # "dicom" | "video"
    study_id: str | None = None
    patient_id: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Inventory:
    """Everything discovered in an input dir before decoding.

    table: for plain trees with --labels, label rows keyed by hashed id (``key``: 'study' or
    'patient'); items look their meta up there after decoding. skipped: (file, reason, detail)
    found before decoding (missing files, view filter, bad labels)."""

    layout: str
    root: Path
    items: list[Item]
    label_columns: list[str]
    skipped: list[dict] = field(default_factory=list)
    table: dict[str, dict] = field(default_factory=dict)
    key: str = "study"
    view_excluded: set[str] = field(default_factory=set)
    label_issues: list[dict] = field(default_factory=list)


def detect_layout(root: Path) -> str:
    """synth (labels.csv + videos.csv), echonet (FileList.csv + Videos/), echoclr (videos/ +
    split CSVs), else a plain dicom/video tree."""
    if (root / "synth.json").exists() or (
        (root / "labels.csv").exists() and (root / "videos.csv").exists()
    ):
        return "synth"
    if (root / "FileList.csv").exists() and (root / "Videos").is_dir():
        return "echonet"
    if (root / "videos").is_dir() and any(
        (root / f"{s}.csv").exists() for s in ("train", "val", "test", "ext_test")
    ):
        return "echoclr"
    return "dicom"


def _walk(root: Path, exclude: Iterable[Path]) -> list[Path]:
    excl = {os.path.realpath(p) for p in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in excl
        )  # fmt: skip
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() in IGNORED_EXTS:
                continue
            if os.path.realpath(p) in excl:
                continue
            out.append(p)
    return out


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTS else "dicom"


def path_ids(rel: str) -> tuple[str, str]:
    """Ids from the folder layout PATIENT/STUDY/file (study = parent, patient = grandparent)."""
    parts = Path(rel).parts
    if len(parts) >= 3:
        return parts[-2], parts[-3]
    if len(parts) == 2:
        return parts[0], parts[0]
    return Path(rel).stem, Path(rel).stem


def _apply_label_map(
    df: pd.DataFrame, label_map: dict[str, str], default: dict[str, pd.Series], source: str
) -> tuple[pd.DataFrame, list[dict]]:
    """Label columns (0/1/NaN) for each row of ``df`` plus bad_label records (row index, detail)."""
    out, issues = pd.DataFrame(index=df.index), []
    if label_map:
        for name, expr in label_map.items():
            values, bad = map_label(df, expr, source)
            out[name] = values
            for i in df.index[bad]:
                issues.append({"row": i, "detail": f"{name} from '{expr}': value not mappable"})
    else:
        for name, (values, bad) in default.items():
            out[name] = values
            for i in df.index[bad]:
                issues.append({"row": i, "detail": f"{name}: value not 0/1"})
    return out, issues


def _auto_binary(df: pd.DataFrame, skip: set[str]) -> dict[str, tuple[pd.Series, pd.Series]]:
    """Columns whose non-empty values are all 0/1 (used when no label_map is given)."""
    out = {}
    for c in df.columns:
        if c in skip:
            continue
        values, bad = parse_labels(df[c])
        if not bad.any() and values.notna().any():
            out[c] = (values, bad)
    return out


def _view_keep(df: pd.DataFrame, cfg, source: str) -> pd.Series:
    col = cfg.view_column
    if col is None:
        return pd.Series(True, index=df.index)
    if col not in df.columns:
        raise UserError(
            f"{source}: view filter column '{col}' not found; columns: {list(df.columns)}",
            fix="set preprocess.view_column to one of them (or unset it)",
        )
    if cfg.view_value is not None:
        return df[col].str.lower() == str(cfg.view_value).lower()
    return pd.to_numeric(df[col], errors="coerce") >= cfg.view_min


def _truthy(series: pd.Series) -> pd.Series:
    s = series.astype("string").str.strip().str.lower()
    return s.isin({"1", "1.0", "true", "yes", "y", "external", "ext", "ext_test"}).fillna(False)


def _external(df: pd.DataFrame, cfg, year: pd.Series | None) -> pd.Series:
    ext = pd.Series(False, index=df.index)
    if cfg.external_column is not None:
        if cfg.external_column not in df.columns:
            raise UserError(
                f"external column '{cfg.external_column}' not in the label file; columns: "
                f"{list(df.columns)}",
                fix="set preprocess.external_column to an existing column",
            )
        ext |= _truthy(df[cfg.external_column])
    if cfg.external_after is not None and year is not None:
        ext |= (year > cfg.external_after).fillna(False)
    return ext.astype(bool)


def _years(df: pd.DataFrame) -> pd.Series | None:
    for c in ("study_year", "year", "study_date", "StudyDate", "date"):
        if c in df.columns:
            return df[c].map(_year).astype("Int64")
    return None


def discover(
    cfg,
    root: Path,
    layout: str = "auto",
    labels: Path | None = None,
    exclude: Iterable[Path] = (),
    external_root: Path | None = None,
) -> Inventory:
    """Inventory of an input dir. ``cfg`` is the ``preprocess`` config section.

    ``external_root``: a separate input dir whose files all go to ext_test.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"input dir not found: {root}", fix="check --input")
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen == "synth":
        inv = _discover_synth(cfg, root)
    elif chosen == "echoclr":
        inv = _discover_echoclr(cfg, root)
    elif chosen == "echonet":
        inv = _discover_echonet(cfg, root)
    else:
        inv = _discover_tree(cfg, root, chosen, labels, exclude)
    if external_root is not None:
        if not Path(external_root).is_dir():
            raise UserError(f"external input dir not found: {external_root}",
                            fix="check preprocess.external_input")  # fmt: skip
        ext = _discover_tree(cfg.model_copy(update={"view_column": None, "external_column": None}),
                             Path(external_root), "dicom", None, exclude)  # fmt: skip
        for it in ext.items:
            it.rel = f"external/{it.rel}"
            it.meta["split"] = "ext_test"
        inv.items.extend(ext.items)
    return inv


def _discover_synth(cfg, root: Path) -> Inventory:
    for name in ("labels.csv", "videos.csv"):
        if not (root / name).exists():
            raise UserError(f"{root}: synth layout needs {name}", fix="re-run `echoclr synth`")
    lab = read_table(root / "labels.csv")
    vids = read_table(root / "videos.csv")
    for col, df, name in (("study_id", lab, "labels.csv"), ("file", vids, "videos.csv"),
                          ("study_id", vids, "videos.csv")):  # fmt: skip
        if col not in df.columns:
            raise UserError(f"{root / name}: no column '{col}'", fix="re-run `echoclr synth`")
    default = {c: parse_labels(lab[c]) for c in ("as", "lvh") if c in lab.columns}
    lbl, issues = _apply_label_map(lab, cfg.label_map, default, str(root / "labels.csv"))
    year = _years(lab)
    ext = _external(lab, cfg, year)
    if "site" in lab.columns:
        ext |= lab["site"].str.lower().eq("external")
    keep_view = (
        _view_keep(lab, cfg, str(root / "labels.csv")) if cfg.view_column in lab.columns else None
    )
    per_study = {}
    for i, sid in enumerate(lab["study_id"]):
        meta = {c: float(lbl[c].iloc[i]) for c in lbl.columns}
        meta["external"] = bool(ext.iloc[i])
        meta["study_year"] = None if year is None or pd.isna(year.iloc[i]) else int(year.iloc[i])
        meta["view_ok"] = True if keep_view is None else bool(keep_view.iloc[i])
        per_study[sid] = (meta, lab["patient_id"].iloc[i] if "patient_id" in lab.columns else sid)
    vkeep = (
        _view_keep(vids, cfg, str(root / "videos.csv")) if cfg.view_column in vids.columns else None
    )
    if cfg.view_column and keep_view is None and vkeep is None:
        _view_keep(lab, cfg, str(root / "labels.csv"))  # raises naming the column
    inv = Inventory("synth", root, [], list(lbl.columns))
    for i, row in vids.iterrows():
        meta, pid = per_study.get(row["study_id"], ({}, None))
        meta = dict(meta)
        pid = row.get("patient_id") or pid or row["study_id"]
        path = root / row["file"]
        if not path.exists():
            inv.skipped.append(
                {"file": row["file"], "reason": "missing_file", "detail": "listed in videos.csv"}
            )
            continue
        if not meta.pop("view_ok", True) or (vkeep is not None and not bool(vkeep.loc[i])):
            inv.skipped.append(
                {"file": row["file"], "reason": "view_filter", "detail": f"{cfg.view_column}"}
            )
            continue
        inv.items.append(Item(path, row["file"], _kind(path), row["study_id"], pid, meta))
    for rec in issues:
        inv.label_issues.append({"file": f"labels.csv:{lab['study_id'].iloc[rec['row']]}",
                                 "reason": "bad_label", "detail": rec["detail"]})  # fmt: skip
    return inv


ECHOCLR_COLUMNS = ["plax_prob", "fpath", "acc_num", "av_stenosis", "video_num"]
AS_VALUES = {"severe": 1.0, "non-severe": 0.0, "nonsevere": 0.0, "non severe": 0.0}


def _read_echoclr_csv(path: Path) -> pd.DataFrame:
    """A split CSV of the published layout: with a header (maybe plus a pandas index column)
    or without one (columns by position)."""
    df = read_table(path)
    if "fpath" not in df.columns:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
        if raw.shape[1] == len(ECHOCLR_COLUMNS) + 1:
            raw = raw.iloc[:, 1:]
        if raw.shape[1] != len(ECHOCLR_COLUMNS):
            raise UserError(
                f"{path}: expected columns {ECHOCLR_COLUMNS} (by name or position), got "
                f"{raw.shape[1]} columns",
                fix="use the published EchoCLR CSV format or --layout dicom with --labels",
            )
        raw.columns = ECHOCLR_COLUMNS
        df = raw.apply(lambda s: s.str.strip())
    df = df.loc[:, [c for c in df.columns if c and not c.startswith("Unnamed")]]
    missing = [c for c in ("fpath", "acc_num") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}", fix="check the split CSV")
    return df


def _as_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    s = values.astype("string").str.strip().str.lower()
    missing = s.isna() | s.isin(_MISSING)
    mapped = s.map(lambda v: AS_VALUES.get(v, np.nan) if isinstance(v, str) else np.nan).astype(
        float
    )
    bad = ~missing & mapped.isna()
    return mapped.where(~missing), bad.astype(bool)


def _lvh_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    s = values.astype("string").str.strip().str.lower()
    missing = s.isna() | s.isin(_MISSING)
    numeric = pd.to_numeric(s, errors="coerce").notna()
    out = (s == "hypertrophy").astype(float).where(~missing & ~numeric)
    return out, (~missing & numeric).astype(bool)


def _find_video(videos: Path, fpath: str) -> Path | None:
    name = Path(fpath.replace("\\", "/")).name
    for cand in (name, name + ".avi", Path(name).stem + ".avi"):
        if (videos / cand).is_file():
            return videos / cand
    return None


def _discover_echoclr(cfg, root: Path) -> Inventory:
    videos = root / "videos"
    frames = []
    for split in ("train", "val", "test", "ext_test"):
        p = root / f"{split}.csv"
        if p.exists():
            df = _read_echoclr_csv(p)
            df["split"] = split
            df["_csv"] = p.name
            frames.append(df)
    if not frames:
        raise UserError(
            f"{root}: the EchoCLR layout needs train.csv / val.csv / test.csv / ext_test.csv",
            fix="add the split CSVs or use --layout dicom with --labels",
        )
    rows = pd.concat(frames, ignore_index=True)
    lvh = None
    if (root / "echo_labels.csv").exists():
        lab = read_table(root / "echo_labels.csv")
        if {"Accession Number", "LVH_LVMi"} - set(lab.columns):
            raise UserError(
                f"{root / 'echo_labels.csv'}: needs columns 'Accession Number' and 'LVH_LVMi'",
                fix="check the label file",
            )
        lab = lab.drop_duplicates("Accession Number", keep="first")
        rows = rows.merge(lab, how="left", left_on="acc_num", right_on="Accession Number")
        lvh = True
    default = {}
    if "av_stenosis" in rows.columns:
        default["as"] = _as_label(rows["av_stenosis"])
    if lvh:
        default["lvh"] = _lvh_label(rows["LVH_LVMi"])
    lbl, issues = _apply_label_map(rows, cfg.label_map, default, str(root))
    keep = _view_keep(rows, cfg, str(root))
    ext = _external(rows, cfg, _years(rows)) if cfg.external_column or cfg.external_after else None
    inv = Inventory("echoclr", root, [], list(lbl.columns))
    listed = set()
    for i, row in rows.iterrows():
        path = _find_video(videos, row["fpath"])
        where = f"{row['_csv']}: {row['fpath']}"
        if path is None:
            inv.skipped.append(
                {"file": where, "reason": "missing_file", "detail": f"not in {videos}"}
            )
            continue
        rel = path.relative_to(root).as_posix()
        listed.add(rel)
        if not bool(keep.loc[i]):
            inv.skipped.append({"file": rel, "reason": "view_filter",
                                "detail": f"{cfg.view_column}={row[cfg.view_column]!r}"})  # fmt: skip
            continue
        meta = {c: float(lbl.at[i, c]) for c in lbl.columns}
        meta["split"] = "ext_test" if ext is not None and ext.loc[i] else row["split"]
        inv.items.append(Item(path, rel, "video", row["acc_num"], row["acc_num"], meta))
    for rec in issues:
        r = rows.loc[rec["row"]]
        inv.label_issues.append({"file": f"{r['_csv']}: {r['fpath']}", "reason": "bad_label",
                                 "detail": rec["detail"]})  # fmt: skip
    for p in sorted(videos.iterdir()):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS and rel not in listed:
            inv.skipped.append({"file": rel, "reason": "unlisted", "detail": "in no split CSV"})
    return inv


def _discover_echonet(cfg, root: Path) -> Inventory:
    fl = read_table(root / "FileList.csv")
    if "FileName" not in fl.columns:
        raise UserError(f"{root / 'FileList.csv'}: no FileName column", fix="check the file")
    default = {}
    for col, thr in cfg.label_threshold.items():
        if col not in fl.columns:
            raise UserError(
                f"preprocess.label_threshold names '{col}', not a FileList.csv column "
                f"({list(fl.columns)})",
                fix="use e.g. --set preprocess.label_threshold.EF=50",
            )
        num = pd.to_numeric(fl[col], errors="coerce")
        missing = fl[col].str.lower().isin(_MISSING)
        default[col.lower()] = ((num < thr).astype(float).where(num.notna()), ~missing & num.isna())
    if not cfg.label_threshold:
        skip = {"FileName", "Split", "FPS", "NumberOfFrames", "FrameHeight", "FrameWidth"}
        default.update(_auto_binary(fl, skip))
    lbl, issues = _apply_label_map(fl, cfg.label_map, default, str(root / "FileList.csv"))
    splits = (
        normalise_split(fl["Split"], str(root / "FileList.csv")) if "Split" in fl.columns else None
    )
    keep = _view_keep(fl, cfg, str(root / "FileList.csv"))
    inv = Inventory("echonet", root, [], list(lbl.columns))
    videos = root / "Videos"
    for i, row in fl.iterrows():
        path = _find_video(videos, row["FileName"])
        if path is None:
            inv.skipped.append({"file": f"Videos/{row['FileName']}", "reason": "missing_file",
                                "detail": "listed in FileList.csv"})  # fmt: skip
            continue
        if not bool(keep.loc[i]):
            inv.skipped.append({"file": path.relative_to(root).as_posix(), "reason": "view_filter",
                                "detail": str(cfg.view_column)})  # fmt: skip
            continue
        meta = {c: float(lbl.at[i, c]) for c in lbl.columns}
        if splits is not None:
            meta["split"] = splits[i]
        sid = (
            Path(row["FileName"]).stem
            if row["FileName"].lower().endswith(".avi")
            else row["FileName"]
        )
        inv.items.append(Item(path, path.relative_to(root).as_posix(), "video", sid, sid, meta))
    for rec in issues:
        inv.label_issues.append({"file": f"FileList.csv:{fl['FileName'].iloc[rec['row']]}",
                                 "reason": "bad_label", "detail": rec["detail"]})  # fmt: skip
    return inv


_STUDY_KEYS = (
    "study_id",
    "StudyInstanceUID",
    "study",
    "acc_num",
    "Accession Number",
    "AccessionNumber",
    "accession",
)
_PATIENT_KEYS = ("patient_id", "PatientID", "patient", "mrn", "MRN")


def _discover_tree(cfg, root: Path, layout: str, labels: Path | None, exclude) -> Inventory:
    files = _walk(root, list(exclude) + ([labels] if labels else []))
    items = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        kind = _kind(f)
        if layout == "video" and kind != "video":
            continue
        sid, pid = path_ids(rel)
        # Videos carry no ids: take them from the folders. DICOMs: header first, folders if empty.
        items.append(Item(f, rel, kind, sid if kind == "video" else None,
                          pid if kind == "video" else None, {"path_ids": (sid, pid)}))  # fmt: skip
    inv = Inventory(layout, root, items, [])
    if labels is None:
        if cfg.view_column or cfg.external_column:
            raise UserError(
                "preprocess.view_column / external_column need a label file for a plain tree",
                fix="pass --labels CSV",
            )
        return inv
    labels = Path(labels)
    if not labels.exists():
        raise UserError(f"label file not found: {labels}", fix="check --labels")
    lab = read_table(labels)
    key_col, key = _label_key(lab, cfg.label_key, labels)
    skip = (
        {key_col, "split", "site", "study_year", "year", "study_date", "StudyDate"}
        | set(_STUDY_KEYS)
        | set(_PATIENT_KEYS)
    )
    default = _auto_binary(lab, skip)
    for c in (cfg.view_column, cfg.external_column):
        default.pop(c, None)
    lbl, issues = _apply_label_map(lab, cfg.label_map, default, str(labels))
    year = _years(lab)
    ext = _external(lab, cfg, year)
    if "site" in lab.columns:
        ext |= lab["site"].str.lower().eq("external")
    splits = normalise_split(lab["split"], str(labels)) if "split" in lab.columns else None
    keep = _view_keep(lab, cfg, str(labels))
    inv.label_columns = list(lbl.columns)
    inv.key = key
    for i in range(len(lab)):
        hid = hash_id(cfg.salt, key, lab[key_col].iloc[i])
        meta = {c: float(lbl[c].iloc[i]) for c in lbl.columns}
        meta["external"] = bool(ext.iloc[i])
        if year is not None and not pd.isna(year.iloc[i]):
            meta["study_year"] = int(year.iloc[i])
        if splits is not None:
            meta["split"] = splits[i]
        if not bool(keep.iloc[i]):
            inv.view_excluded.add(hid)
        if hid in inv.table:
            raise UserError(
                f"{labels}: {key_col} '{lab[key_col].iloc[i]}' occurs twice",
                fix="keep one row per id in the label file",
            )
        inv.table[hid] = meta
    for rec in issues:
        inv.label_issues.append({"file": f"{labels.name}:{lab[key_col].iloc[rec['row']]}",
                                 "reason": "bad_label", "detail": rec["detail"]})  # fmt: skip
    return inv


def _label_key(lab: pd.DataFrame, label_key: str, path: Path) -> tuple[str, str]:
    """(column, 'study'|'patient') the label file is keyed by."""
    wanted = {"study_id": "study", "patient_id": "patient"}.get(label_key)
    for key, names in (("study", _STUDY_KEYS), ("patient", _PATIENT_KEYS)):
        if wanted not in (None, key):
            continue
        for n in names:
            if n in lab.columns:
                return n, key
    raise UserError(
        f"{path}: no id column to join labels on (study: {list(_STUDY_KEYS)}; patient: "
        f"{list(_PATIENT_KEYS)}); columns: {list(lab.columns)}",
        fix="add a study_id or patient_id column (set preprocess.label_key to choose)",
    )
