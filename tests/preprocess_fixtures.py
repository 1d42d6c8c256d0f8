"""Fixture builders for the preprocess tests: fan-shaped echo-like videos with burned-in
overlays, DICOM files in several encodings (pydicom), and AVIs (cv2)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def fan_mask(h: int, w: int, radius: float | None = None, half_deg: float = 35.0) -> np.ndarray:
    """Boolean fan (H, W): apex at the top centre."""
    radius = radius or 0.65 * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - w / 2.0, yy - 2.0
    r = np.hypot(dx, dy)
    theta = np.degrees(np.arctan2(dx, dy))
    return (r <= radius) & (np.abs(theta) <= half_deg)


def fan_video(
    n_frames: int = 20,
    h: int = 64,
    w: int = 80,
    seed: int = 0,
    overlay: bool = True,
    doppler: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 RGB echo-like video and its true fan mask (H, W).

    Inside the fan: fresh speckle every frame plus a moving bright band. Outside: burned-in
    text (also inside the fan's bounding box), a marker next to the fan and an ECG trace with a
    sweeping cursor. ``doppler``: a saturated red/blue jet inside the fan.
    """
    rng = np.random.default_rng(seed)
    mask = fan_mask(h, w)
    frames = np.zeros((n_frames, h, w, 3), np.uint8)
    yy = np.mgrid[0:h, 0:w][0]
    for t in range(n_frames):
        img = rng.uniform(25, 140, (h, w))
        band = np.abs(yy - (0.3 + 0.2 * np.sin(t / 3.0)) * h) < 4
        img[band] = 220
        gray = np.where(mask, img, 0).astype(np.uint8)
        frame = np.repeat(gray[..., None], 3, axis=-1)
        if overlay:
            cv2.putText(frame, "ID 12", (1, 8), cv2.FONT_HERSHEY_PLAIN, 0.6, (230, 230, 230), 1)
            cv2.putText(frame, "HR", (w - 16, 8), cv2.FONT_HERSHEY_PLAIN, 0.6, (230, 230, 230), 1)
            frame[h - 10 : h - 8, 4 : w - 4] = (0, 220, 80)  # ECG baseline
            cx = 4 + (t * 3) % (w - 8)
            frame[h - 14 : h - 4, cx] = (255, 255, 0)  # sweeping cursor
        if doppler:
            jet = mask & (np.abs(yy - h // 2) < h // 6)
            frame[jet] = (200 + t % 40, 30, 30) if t % 2 else (30, 30, 220)
        frames[t] = frame
    return frames, mask


def dicom_dataset(
    frames: np.ndarray,
    photometric: str = "RGB",
    patient: str = "PAT1",
    study: str = "1.2.826.0.1.1",
    date: str = "20190305",
    number_of_frames: int | None = -1,
    cine_rate: float | None = 30.0,
    frame_time: float | None = None,
    frame_time_vector: list[float] | None = None,
    regions: list[tuple] | None = None,
):
    """A multi-frame ultrasound Dataset with native (uncompressed) pixel data.

    frames: (T,H,W) uint8/uint16 or (T,H,W,3) uint8. number_of_frames: -1 = T, None = omit.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = patient
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = study
    ds.StudyDate = date
    if number_of_frames is not None:
        ds.NumberOfFrames = frames.shape[0] if number_of_frames == -1 else number_of_frames
    if cine_rate is not None:
        ds.CineRate = cine_rate
    if frame_time is not None:
        ds.FrameTime = frame_time
    if frame_time_vector is not None:
        ds.FrameTimeVector = frame_time_vector
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    color = frames.ndim == 4
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = photometric
    if color:
        ds.PlanarConfiguration = 0
    bits = 16 if frames.dtype == np.uint16 else 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if regions:
        items = []
        for x0, y0, x1, y1 in regions:
            r = Dataset()
            r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
            r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
            r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
            items.append(r)
        ds.SequenceOfUltrasoundRegions = items
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def save(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_tree(root: Path, n: int, *, frames: int, seed: int, study: str) -> Path:
    """``n`` patients with one study of one fan-video DICOM each, at ``root/PAT{i}/file{i}``
    (patient ``PAT{i}``, study ``{study}.{i}``, ``frames`` frames of 96x120, seed ``seed + i``)."""
    for i in range(n):
        video, _ = fan_video(frames, 96, 120, seed=seed + i)
        save(
            dicom_dataset(video, patient=f"PAT{i}", study=f"{study}.{i}"),
            root / f"PAT{i}" / f"file{i}",
        )
    return root


def jpeg_baseline(ds, frames: np.ndarray) -> None:
    """Encapsulate per-frame JPEG baseline (4:2:2, cv2) as YBR_FULL_422 like vendors do."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    params = [cv2.IMWRITE_JPEG_QUALITY, 92,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]  # fmt: skip
    chunks = [
        cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), params)[1].tobytes()
        for f in frames
    ]
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate(chunks)
    ds["PixelData"].VR = "OB"


def write_avi(path: Path, frames: np.ndarray, fps: float = 30.0) -> Path:
    """MJPG AVI of RGB frames (T,H,W,3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames.shape[2], frames.shape[1])
    )
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def small_cfg(**pre):
    """Config with test-sized preprocess settings (32 px output, 8-frame minimum, 1 worker) and
    a fixed salt, so hashed ids (and the manifest order) are the same in every run."""
    from echoclr_cli.config.schema import Config

    cfg = Config()
    cfg.preprocess.salt = "echoclr"
    cfg.preprocess.size = 32
    cfg.preprocess.min_frames = 8
    cfg.preprocess.workers = 1
    cfg.preprocess.max_skipped_frac = 1.0
    for k, v in pre.items():
        setattr(cfg.preprocess, k, v)
    return cfg


def jpeg_archive_without_decoder(root: Path, monkeypatch, h: int, w: int, ext: str = "") -> Path:
    """3 JPEG Baseline DICOMs + 1 uncompressed in ``root``, with the JPEG decoder reported missing
    (FAULTS.md 6). Returns ``root``."""
    from echoclr_cli.data import readers

    frames, _ = fan_video(10, h, w, seed=5)
    for i in range(3):
        ds = dicom_dataset(frames, patient=f"P{i}", study=f"{i}")
        jpeg_baseline(ds, frames)
        save(ds, root / f"j{i}{ext}")
    save(dicom_dataset(frames), root / "plain.dcm")
    real = readers.decoder_available
    monkeypatch.setattr(
        readers, "decoder_available", lambda uid: False if uid.endswith(".4.50") else real(uid)
    )
    return root


def patch_avi_frame_count(path: Path, value: int) -> None:
    """Overwrite dwTotalFrames (avih) and dwLength (strh) in an AVI header."""
    data = bytearray(path.read_bytes())
    i = data.find(b"avih")
    data[i + 8 + 16 : i + 8 + 20] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    j = data.find(b"strh")
    data[j + 8 + 32 : j + 8 + 36] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def read_skipped(data_dir: Path) -> pd.DataFrame:
    """skipped.csv joined with the original paths from ``private/skipped_paths.csv`` (column
    ``path``; the file reference stays in ``file``); needs the private folder."""
    from echoclr_cli.data.privacy import PRIVATE, SKIPPED_PATHS

    data_dir = Path(data_dir)
    pub = pd.read_csv(data_dir / "skipped.csv", dtype=str, keep_default_na=False)
    priv = data_dir / PRIVATE / SKIPPED_PATHS
    if not priv.exists():
        pub["path"] = ""
        return pub
    paths = pd.read_csv(priv, dtype=str, keep_default_na=False)
    return pub.merge(paths[["file", "path", "detail_private"]], on="file", how="left")


def skipped_by_path(out: Path):
    """skipped.csv of a dataset dir indexed by the original relative path (from private/)."""
    return read_skipped(out).set_index("path")


def id_map(out: Path):
    """private/id_map.csv of a dataset dir (kind, original, hashed)."""
    import pandas as pd

    return pd.read_csv(Path(out) / "private" / "id_map.csv", dtype=str, keep_default_na=False)


def video_id_of(out: Path, rel: str) -> str:
    """The hashed video id of input file ``rel`` (via the private id map)."""
    ids = id_map(out)
    hit = ids[(ids["kind"] == "video") & (ids["original"] == rel)]
    assert len(hit) == 1, f"{rel} not in the id map"
    return hit["hashed"].iloc[0]


def file_ref_of(out: Path, rel: str) -> str:
    """The public reference (skipped.csv, warnings) of input file ``rel``, from the private salt."""
    import json

    from echoclr_cli.data.privacy import file_ref

    salt = json.loads((Path(out) / "private" / "salt.json").read_text())["salt"]
    return file_ref(salt, rel)
