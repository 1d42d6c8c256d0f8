"""Ultrasound sector detection, masking, cropping and resizing.

Two spatial rules (``preprocess.resize``): ``whole_frame`` (published) resizes the whole masked
frame to size x size (aspect not kept); ``sector_crop`` crops to the sector's bounding box, pads
it square and resizes (more pixels on the sector, aspect kept).

Everything outside the ultrasound sector (burned-in text, ECG trace, UI, logos) is removed.
The published pipeline took "the convex hull of the largest contour of the (binarized) image
content"; a static overlay that touches the sector or sits inside its bounding box survives that
(and a big logo can be the largest contour). We combine the content rule with time:

1. per pixel: the time-max and the share of consecutive frame pairs in which it changes;
2. *overlay* = bright pixels that (almost) never change (text, ECG trace and cursor, logos,
   markers); *content* = non-black pixels that are not overlay;
3. an opening cuts thin links (anti-aliased text edges, compression halos), the connected region
   of content holding the most *changing* pixels (speckle, moving tissue) is the sector, and its
   convex hull (eroded by one pixel) is the mask. A fan with a half angle up to 90 degrees is
   convex, so the hull of a part of the fan never leaves the fan and fills dark blood pools.

A video that never moves falls back to the published rule on the time-max image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# A pixel *changes* between two frames when it differs by more than CHANGE_LEVEL gray levels.
# Dynamic: changes in at least CHANGE_SHARE of the frame pairs (speckle changes almost every
# frame; a sweeping ECG cursor changes a pixel in only a few). Overlay: brighter than
# OVERLAY_LEVEL and changes in fewer than STATIC_SHARE of the pairs.
CHANGE_LEVEL = 4
CHANGE_SHARE = 0.2
STATIC_SHARE = 0.05
OVERLAY_LEVEL = 24
# Compression rim: region pixels darker (time-mean) than this share of the edge band's median.
HALO_SHARE = 0.15
# Content: time-max above this gray level (the sector's background is not pure black).
CONTENT_LEVEL = 1
# A detected sector covering less than this share of the frame (or of the ROI) is not trusted.
MIN_AREA_SHARE = 0.02
# Color Doppler: share of sector pixels with saturated colour (channel spread > SAT_SPREAD).
SAT_SPREAD = 40
DOPPLER_SHARE = 0.01
# Gray test: channels count as equal when at most this share of sector pixels differ by > GRAY_SPREAD.
GRAY_SPREAD = 12
GRAY_SHARE = 0.002
SAMPLE_FRAMES = 8


@dataclass(frozen=True)
class SectorCrop:
    """Where the sector is and how it maps to the output square.

    mask: (H, W) bool sector mask in the raw frame; (y0, y1, x0, x1): its bounding box;
    side: the square side after padding; (pad_y, pad_x): offset of the box inside the square;
    size: the output side. ``source``: "pixels", "region+pixels" or "fallback".
    ``whole``: the whole (H, W) frame is resized to (size, size), no crop and no padding (the
    published rule, aspect not kept; the box is then the whole frame).
    """

    mask: np.ndarray
    y0: int
    y1: int
    x0: int
    x1: int
    side: int
    pad_y: int
    pad_x: int
    size: int
    source: str
    whole: bool = False


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(T,H,W,3) RGB or (T,H,W) uint8 -> (T,H,W) uint8 luminance."""
    if frames.ndim == 3:
        return frames
    t, h, w, _ = frames.shape
    flat = frames.reshape(t * h, w, 3)  # (T*H, W, 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(t, h, w)


def temporal_stats(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel change rate, max and mean of a (T,H,W) uint8 video (memory O(H*W)).

    Returns (rate (H,W) float32: share of consecutive frame pairs that differ by more than
    CHANGE_LEVEL, max (H,W) uint8, mean (H,W) float32).
    """
    h, w = gray.shape[1:]
    changes = np.zeros((h, w), np.uint16)
    mx = gray[0].copy()
    total = gray[0].astype(np.float32)
    for prev, cur in zip(gray[:-1], gray[1:], strict=True):
        diff = cv2.absdiff(prev, cur)  # (H, W) uint8
        changes += diff > CHANGE_LEVEL
        np.maximum(mx, cur, out=mx)
        total += cur
    rate = changes.astype(np.float32) / max(1, len(gray) - 1)
    return rate, mx, total / len(gray)


def _open(binary: np.ndarray, open_px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px, open_px))
    return cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN, kernel)


def _hull(region: np.ndarray) -> np.ndarray:
    """Convex hull (H,W) bool of a non-empty (H,W) region, eroded by 1 px to stay inside it."""
    contours, _ = cv2.findContours(
        region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    hull = cv2.convexHull(np.concatenate(contours, axis=0))
    out = np.zeros(region.shape, np.uint8)
    cv2.fillConvexPoly(out, hull, 1)
    return cv2.erode(out, np.ones((3, 3), np.uint8)).astype(bool)


def _trim_halo(region: np.ndarray, mean: np.ndarray, open_px: int) -> np.ndarray:
    """Drop the faint rim that lossy compression (JPEG blocks, MPEG) smears outside the sector.

    Pixels of ``region`` whose time-mean is below HALO_SHARE x the median time-mean of a band
    well inside the region's edge are removed (then an opening and the largest part is kept).
    Sources without a rim keep their dark edge pixels because the threshold is relative to the
    edge's own brightness.
    """
    h, w = region.shape
    band_px = max(3, min(h, w) // 15)
    r8 = region.astype(np.uint8)
    outer = cv2.erode(r8, np.ones((band_px, band_px), np.uint8))
    inner = cv2.erode(outer, np.ones((band_px, band_px), np.uint8))
    band = (outer > 0) & (inner == 0)
    if band.sum() < 50:
        return region
    level = HALO_SHARE * float(np.median(mean[band]))
    solid = _open(region & (mean > level), open_px)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if n <= 1:
        return region
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def detect_sector(gray: np.ndarray, roi: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Boolean sector mask (H,W) of a (T,H,W) uint8 video; ``roi`` (H,W) bool limits the search.

    Returns (mask, source): source "pixels" (content + time, see the module docstring) or
    "fallback" (published rule on the time-max image, for videos that do not move). An all-False
    mask means nothing was found.
    """
    t, h, w = gray.shape
    rate, mx, mean = temporal_stats(gray)
    if roi is not None:
        rate = np.where(roi, rate, 0)
        mx = np.where(roi, mx, 0)
        mean = np.where(roi, mean, 0)
    area = float(roi.sum()) if roi is not None else float(h * w)
    open_px = max(3, (min(h, w) // 60) | 1)
    dynamic = (rate >= CHANGE_SHARE) & (mx > CONTENT_LEVEL)
    if t >= 2 and dynamic.sum() >= MIN_AREA_SHARE * area:
        overlay = (rate < STATIC_SHARE) & (mx > OVERLAY_LEVEL)
        content = _open((mx > CONTENT_LEVEL) & ~overlay, open_px)
        n, labels = cv2.connectedComponents(content, connectivity=8)
        if n > 1:
            hits = np.bincount(labels[dynamic], minlength=n)
            hits[0] = 0
            best = int(np.argmax(hits))
            if hits[best] >= MIN_AREA_SHARE * area:
                region = _trim_halo(labels == best, mean, open_px)
                return _hull(region), "pixels"
    content = _open(mx > CONTENT_LEVEL + OVERLAY_LEVEL // 2, open_px)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(content, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool), "fallback"
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return _hull(labels == best), "fallback"


def region_roi(regions: list[tuple[int, int, int, int]], h: int, w: int) -> np.ndarray | None:
    """Union of DICOM ultrasound regions (x0, y0, x1, y1 inclusive) when consistent with the image.

    Consistent = every region inside the frame, non-degenerate and together covering at least
    MIN_AREA_SHARE of it. Otherwise None (the caller detects from pixels only).
    """
    if not regions:
        return None
    roi = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in regions:
        if not (0 <= x0 < x1 < w and 0 <= y0 < y1 < h):
            return None
        roi[y0 : y1 + 1, x0 : x1 + 1] = True
    if roi.sum() < MIN_AREA_SHARE * h * w:
        return None
    return roi


def plan_crop(mask: np.ndarray, size: int, source: str) -> SectorCrop:
    """Crop box of ``mask`` (H,W) bool, padded to a centred square that is resized to ``size``."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    bh, bw = y1 - y0, x1 - x0
    side = max(bh, bw)
    return SectorCrop(mask, y0, y1, x0, x1, side, (side - bh) // 2, (side - bw) // 2, size, source)


def plan_whole(mask: np.ndarray, size: int, source: str) -> SectorCrop:
    """Whole-frame plan of ``mask`` (H,W) bool: the masked frame resized to ``size`` x ``size``
    (no crop to the sector, no padding, aspect not kept), as the published preprocessing did.
    A frame already ``size`` x ``size`` is not resampled at all (only masked)."""
    h, w = mask.shape
    return SectorCrop(mask, 0, h, 0, w, max(h, w), 0, 0, size, source, whole=True)


def _fit(crop: SectorCrop, image: np.ndarray) -> np.ndarray:
    """Whole-frame resize (INTER_AREA) of an (H,W[,3]) image; a copy when already the size."""
    if image.shape[:2] == (crop.size, crop.size):
        return image.copy()
    return cv2.resize(image, (crop.size, crop.size), interpolation=cv2.INTER_AREA)


def _pad(crop: SectorCrop, box: np.ndarray) -> np.ndarray:
    """Place an already cut (bh, bw, ...) box into a zero (side, side, ...) square."""
    out = np.zeros((crop.side, crop.side) + box.shape[2:], box.dtype)
    out[crop.pad_y : crop.pad_y + box.shape[0], crop.pad_x : crop.pad_x + box.shape[1]] = box
    return out


def square(crop: SectorCrop, image: np.ndarray) -> np.ndarray:
    """Cut the crop box out of a raw-frame ``image`` (H,W,...) and pad it to (side, side, ...)."""
    return _pad(crop, image[crop.y0 : crop.y1, crop.x0 : crop.x1])


def map_mask(crop: SectorCrop, mask: np.ndarray) -> np.ndarray:
    """Map any (H,W) mask of the raw frame to the output square: (size, size) float in [0, 1].

    Value = share of the output pixel's area covered by ``mask`` (INTER_AREA), e.g. for tests
    that check nothing outside the true sector survives.
    """
    if crop.whole:
        return np.clip(_fit(crop, mask.astype(np.float32)), 0.0, 1.0)
    sq = square(crop, mask.astype(np.float32))
    return np.clip(cv2.resize(sq, (crop.size, crop.size), interpolation=cv2.INTER_AREA), 0.0, 1.0)


def apply_crop(frames: np.ndarray, crop: SectorCrop) -> np.ndarray:
    """Mask, crop, pad and resize (INTER_AREA), frame by frame.

    (T,H,W) or (T,H,W,3) uint8 -> (T,S,S) or (T,S,S,3) uint8. Output pixels less than half
    covered by the sector are set to 0, so the border is clean. A ``whole`` plan masks and
    resizes the whole frame (a frame already (S, S) comes out pixel-identical apart from masking).
    """
    rgb = frames.ndim == 4
    size = crop.size
    if crop.whole:
        m, keep = crop.mask, map_mask(crop, crop.mask) >= 0.5  # (H, W), (S, S)
        if rgb:
            m, keep = m[..., None], keep[..., None]
        out = np.empty((frames.shape[0], size, size) + frames.shape[3:], np.uint8)
        for i, frame in enumerate(frames):
            out[i] = _fit(crop, frame * m) * keep  # (S, S[, 3])
        return out
    m = crop.mask[crop.y0 : crop.y1, crop.x0 : crop.x1]  # (bh, bw)
    keep = map_mask(crop, crop.mask) >= 0.5  # (S, S)
    if rgb:
        m, keep = m[..., None], keep[..., None]
    out = np.empty((frames.shape[0], size, size) + frames.shape[3:], np.uint8)
    for i, frame in enumerate(frames):
        box = frame[crop.y0 : crop.y1, crop.x0 : crop.x1] * m  # (bh, bw[, 3]) zero outside
        small = cv2.resize(_pad(crop, box), (size, size), interpolation=cv2.INTER_AREA)
        out[i] = small * keep  # (S, S[, 3])
    return out


def _sample(frames: np.ndarray) -> np.ndarray:
    idx = np.unique(np.linspace(0, len(frames) - 1, min(SAMPLE_FRAMES, len(frames))).astype(int))
    return frames[idx]


def channel_spread(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """max - min over RGB channels of the sector pixels of up to SAMPLE_FRAMES frames.

    frames: (T,H,W,3) uint8 (gray (T,H,W) gives zeros); mask: (H,W) bool. Returns (n,) uint8.
    """
    if frames.ndim != 4 or not mask.any():
        return np.zeros(1, np.uint8)
    parts = []
    for frame in _sample(frames):
        r, g, b = cv2.split(frame)
        spread = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))  # (H, W)
        parts.append(spread[mask])
    return np.concatenate(parts)


def is_color_doppler(spread: np.ndarray) -> bool:
    """True when substantial saturated colour sits inside the sector (colour flow Doppler).
    ``spread``: from :func:`channel_spread`."""
    return float((spread > SAT_SPREAD).mean()) > DOPPLER_SHARE


def channels_equal(spread: np.ndarray) -> bool:
    """True for gray content (also gray stored as RGB/YBR with compression noise)."""
    return float((spread > GRAY_SPREAD).mean()) <= GRAY_SHARE
