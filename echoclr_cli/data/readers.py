"""Decode DICOM files into uint8 frames + metadata; the reader types shared with video files
(``echoclr_cli.data.video_reader``).

Readers raise :class:`SkipVideo` with a reason code (the ``reason`` column of skipped.csv):
``invalid_dicom, no_pixel_data, not_ultrasound, not_cine, frame_count_mismatch,
no_decodable_frames, too_few_frames, low_fps, missing_decoder, decode_error, missing_file,
too_large`` (rows x cols x frames x samples over ``max_pixels``, from the header, before any
pixel is decoded). Every header is read under :func:`bounds.header_warnings`: pydicom's
warnings are counted by reason, never printed (they can hold tag values).
A DICOM's Modality (0008,0060) is checked right after its header is parsed, before any frame is
counted or decoded: anything but ``US`` is skipped as ``not_ultrasound``; a file without a
Modality is accepted (and counted by preprocess: ``modality_missing``).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echoclr_cli.data.bounds import (
    DEFAULT_MAX_PIXELS,
    file_bytes_excess,
    header_warnings,
    not_regular,
    pixel_excess,
)
from echoclr_cli.data.dicom_fields import deidentified_fields
from echoclr_cli.errors import UserError

# Reasons that mean "a file that should have worked did not" (count towards max_skipped_frac);
# the others are deliberate filters (stills, reports, Doppler, low fps, short clips, view).
FAILURE_REASONS = {
    "invalid_dicom", "frame_count_mismatch", "no_decodable_frames", "decode_error",
    "missing_file", "missing_decoder", "no_sector",
}  # fmt: skip

DICOMDIR_UID = "1.2.840.10008.1.3.10"
# The reference decoder per transfer syntax: the same file must give the same pixels whatever
# optional decoders are installed (pillow and the GPL pylibjpeg-libjpeg differ by a few grey
# levels on JPEG Baseline). dataset.json records this map.
REFERENCE_DECODERS = {"1.2.840.10008.1.2.4.50": "pillow"}
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
}  # fmt: skip


class SkipVideo(Exception):
    """An input that is not used: ``reason`` is the skipped.csv code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.ids: tuple[str | None, str | None] = (None, None)  # (study, patient) from a header
        self.keys: dict = {}  # header_keys() of the file, when its header was read


@dataclass
class ReadOptions:
    max_frames: int = 100
    min_frames: int = 16
    min_fps: float = 25.0
    fallback_fps: float = 30.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # preprocess.max_pixels (bounds.pixel_excess)


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
    fields: dict = field(default_factory=dict)  # de-identified DICOM fields (dicom_fields.FIELDS)
    keys: dict = field(default_factory=dict)  # header_keys(): label-key tags, private
    modality_missing: bool = False  # a DICOM without Modality (accepted, counted)


def regular_size(path: Path) -> int:
    """The size of ``path`` (0 when it cannot be read: the reader names the problem); a FIFO,
    device or socket is ``not_regular_file`` before anything opens it."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    what = not_regular(st.st_mode)
    if what:
        raise SkipVideo("not_regular_file", f"{what}, not a regular file (never opened)")
    return st.st_size


# --------------------------------------------------------------------------- DICOM
def transfer_syntax(path: Path) -> str | None:
    """Transfer syntax UID from the file meta (None when not readable as DICOM)."""
    from pydicom.filereader import read_file_meta_info

    try:
        with header_warnings():
            meta = read_file_meta_info(path)
            return str(meta.TransferSyntaxUID) if "TransferSyntaxUID" in meta else None
    except Exception:
        return None


# What to install for a pydicom decoder, by transfer-syntax family (measured in README,
# "Licences"): pillow (HPND) decodes JPEG Baseline/Extended and JPEG 2000, pydicom itself RLE.
# JPEG Lossless and JPEG-LS need python-gdcm (Apache-2.0/BSD) or pylibjpeg-libjpeg (GPLv3, optional extra).
_LOSSLESS_HINT = (
    "pip install python-gdcm (Apache-2.0, GDCM itself BSD), or pip install 'echoclr[gpl-decoders]' "
    "(pylibjpeg-libjpeg, GPLv3)"
)
_DECODER_PACKAGES = [
    (("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"), "pip install pillow"),
    (("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
      "1.2.840.10008.1.2.4.81"), _LOSSLESS_HINT),
    (("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
      "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
     "pip install pillow (or pylibjpeg pylibjpeg-openjpeg)"),
    (("1.2.840.10008.1.2.5",), "pip install pydicom>=3 (its RLE decoder is built in)"),
]  # fmt: skip


def decoder_package(uid: str) -> str | None:
    """The install command that adds a decoder for ``uid``; None when no pydicom plugin exists."""
    for uids, hint in _DECODER_PACKAGES:
        if uid in uids:
            return hint
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
        hints = list(dict.fromkeys(pkg for _, _, pkg in missing))
        raise UserError(
            "no pixel decoder installed for " + "; ".join(parts) + "; nothing was processed",
            fix="; ".join(hints),
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


def parse_year(value) -> int | None:
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


def _pixel_budget(ds, declared: int | None, budget: int) -> str | None:
    """rows x cols x frames x samples of the header against the budget (bounds.pixel_excess)."""
    try:
        dims = [int(ds.Columns), int(ds.Rows), declared or 1, int(ds.get("SamplesPerPixel", 1))]
    except (TypeError, ValueError):
        return None  # unreadable numbers: the frame checks below skip the file
    return pixel_excess(*dims, budget)


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


def _header_ids(ds) -> tuple[str | None, str | None]:
    study = ds.get("StudyInstanceUID") or ds.get("AccessionNumber") or None
    patient = str(ds.get("PatientID") or "").strip() or None
    return (str(study).strip() if study else None), patient


def header_keys(ds) -> dict:
    """The tags a label file may be keyed by besides the study/patient ids (original values,
    private: they never leave the worker's private results): AccessionNumber, StudyDate."""

    def text(tag: str) -> str | None:
        try:
            v = ds.get(tag)
        except Exception:  # a malformed element: as if absent
            return None
        return (str(v).strip() or None) if v is not None else None

    return {"accession": text("AccessionNumber"), "study_date": text("StudyDate")}


_MODALITY_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")


def check_modality(ds) -> bool:
    """Raise ``not_ultrasound`` for a Modality other than US (the detail is the modality code,
    e.g. ``MR``: a code, not an identifier; odd text is shown as ``other``). Returns whether
    the Modality is missing (accepted)."""
    value = str(ds.get("Modality", "") or "").strip().upper()
    if not value:
        return True
    if value != "US":
        code = value if _MODALITY_CODE.fullmatch(value) else "other"
        raise SkipVideo("not_ultrasound", f"Modality {code}, not US")
    return False


@dataclass
class Header:
    """What a stored video's file says besides its pixels (a re-run re-reads only this)."""

    study_id: str | None
    patient_id: str | None
    keys: dict
    modality_missing: bool


def read_header(path: Path) -> Header:
    """Header only (no pixel data): ids, label-key tags, the Modality check (``SkipVideo``
    ``not_ultrasound``). Other read errors propagate (the caller decodes the file instead)."""
    with header_warnings():
        return _read_header(path)


def _read_header(path: Path) -> Header:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    study, patient = _header_ids(ds)
    try:
        missing = check_modality(ds)
    except SkipVideo as e:
        e.ids, e.keys = (study, patient), header_keys(ds)
        raise
    return Header(study, patient, header_keys(ds), missing)


def read_dicom(path: Path, opts: ReadOptions, undecodable: set[str] = frozenset()) -> RawVideo:
    """Decode a cine DICOM (any transfer syntax pydicom + pylibjpeg decode) to uint8 frames.

    Colour: YBR is converted to RGB by pydicom, palette colour through its LUT, MONOCHROME1 is
    inverted; 16-bit data is scaled to uint8 by its window or actual range. Only the first
    ``max_frames`` frames are decoded, and only when rows x cols x frames x samples fits
    ``max_pixels`` (else ``too_large``; a file larger than that budget is not read at all).
    """
    with header_warnings():
        return _read_dicom(path, opts, undecodable)


def _read_dicom(path: Path, opts: ReadOptions, undecodable: set[str]) -> RawVideo:
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = regular_size(path)
    excess = file_bytes_excess(size, opts.max_pixels)
    if excess:
        raise SkipVideo("too_large", excess)
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
    try:
        return _decode_dicom(ds, opts, undecodable)
    except SkipVideo as e:  # the header was read: its ids tell which study the skip belongs to
        e.ids = _header_ids(ds)
        e.keys = header_keys(ds)
        raise


def _decode_dicom(ds, opts: ReadOptions, undecodable: set[str]) -> RawVideo:
    from pydicom.pixels import apply_color_lut, iter_pixels

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
    modality_missing = check_modality(ds)  # a CT/MR image: skipped before any frame is decoded
    if meta is None or "TransferSyntaxUID" not in meta:
        raise SkipVideo("invalid_dicom", "no transfer syntax in the file meta")
    uid = str(meta.TransferSyntaxUID)
    if uid in undecodable or not decoder_available(uid):
        pkg = decoder_package(uid)
        hint = f"; {pkg}" if pkg else "; no pydicom decoder exists (convert the file)"
        raise SkipVideo("missing_decoder", uid_name(uid) + hint)
    for tag in ("Rows", "Columns"):
        if tag not in ds:
            raise SkipVideo("invalid_dicom", f"pixel data without {tag}")

    declared = _declared_frames(ds)
    excess = _pixel_budget(ds, declared, opts.max_pixels)
    if excess:
        raise SkipVideo("too_large", excess)
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
            plugin = REFERENCE_DECODERS.get(str(uid), "")
            for arr in iter_pixels(ds, indices=range(keep), decoding_plugin=plugin):
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
    fields = deidentified_fields(ds)  # coarse, no UID/date: safe for the public manifest
    return RawVideo(
        frames=video,
        fps=fps,
        fps_source=fps_source,
        n_total=declared,
        patient_id=str(ds.get("PatientID") or "").strip() or None,
        study_id=str(study).strip() if study else None,
        study_year=fields["study_year"],  # one definition of the year (dicom_fields)
        regions=_dicom_regions(ds),
        fields=fields,
        keys=header_keys(ds),
        modality_missing=modality_missing,
    )
