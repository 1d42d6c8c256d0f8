"""Sector detection, masking and cropping on fan videos with burned-in overlays."""

import cv2
import numpy as np
from preprocess_fixtures import fan_mask, fan_video

from echoclr_cli.preprocess import sector


def _outside_ok(
    stored: np.ndarray, crop: sector.SectorCrop, true: np.ndarray, border: int = 1
) -> int:
    """Count stored pixels that are non-zero although the true sector does not reach them
    (allowing ``border`` output pixels)."""
    reach = sector.map_mask(crop, true) > 0
    reach = cv2.dilate(reach.astype(np.uint8), np.ones((2 * border + 1,) * 2, np.uint8)) > 0
    live = stored.max(axis=0) > 0
    if live.ndim == 3:
        live = live.any(-1)
    return int((live & ~reach).sum())


def test_overlays_removed_inside_bbox_and_ecg():
    frames, true = fan_video(24, 96, 120, seed=1)
    gray = sector.to_gray(frames)
    mask, source = sector.detect_sector(gray)
    assert source == "pixels"
    assert not (mask & ~true).any()  # never outside the fan (text in the bbox corners, ECG)
    assert (mask & true).sum() / true.sum() > 0.85
    crop = sector.plan_crop(mask, 32, source)
    stored = sector.apply_crop(gray, crop)
    assert stored.shape == (24, 32, 32) and stored.dtype == np.uint8
    assert _outside_ok(stored, crop, true, border=0) == 0


def test_static_bright_logo_larger_than_sector_is_not_chosen():
    frames, true = fan_video(16, 96, 120, seed=2)
    frames[:, 60:96, 0:40] = 200  # big static logo box, bigger than nothing moves in it
    mask, _ = sector.detect_sector(sector.to_gray(frames))
    assert not (mask & ~true).any()


def test_dicom_region_restricts_search_and_inconsistent_region_is_ignored():
    frames, true = fan_video(16, 64, 80, seed=3)
    ys, xs = np.nonzero(true)
    roi = sector.region_roi([(xs.min(), ys.min(), xs.max(), ys.max())], 64, 80)
    assert roi is not None and roi[ys, xs].all()
    assert sector.region_roi([(0, 0, 500, 400)], 64, 80) is None  # larger than the image
    assert sector.region_roi([(10, 10, 11, 11)], 64, 80) is None  # degenerate / tiny
    mask, _ = sector.detect_sector(sector.to_gray(frames), roi)
    assert not (mask & ~roi).any()


def test_static_video_falls_back_to_published_rule():
    frames, true = fan_video(1, 64, 80, seed=4, overlay=False)
    frames = np.repeat(frames, 10, axis=0)  # no motion at all
    mask, source = sector.detect_sector(sector.to_gray(frames))
    assert source == "fallback"
    assert (mask & true).sum() / true.sum() > 0.8 and not (mask & ~true).any()


def test_crop_is_square_centered_and_rgb_kept():
    mask = np.zeros((40, 100), bool)
    mask[10:30, 20:80] = True  # 20 x 60 box -> padded to 60 x 60
    crop = sector.plan_crop(mask, 30, "pixels")
    assert (crop.side, crop.pad_y, crop.pad_x) == (60, 20, 0)
    frames = np.full((3, 40, 100, 3), 100, np.uint8)
    out = sector.apply_crop(frames, crop)
    assert out.shape == (3, 30, 30, 3)
    assert out[:, :9].max() == 0 and out[:, 11:19].min() == 100  # pad rows zero, content kept


def test_color_doppler_and_gray_detection():
    gray_frames, true = fan_video(12, 64, 80, seed=5)
    spread = sector.channel_spread(gray_frames, true)
    assert sector.channels_equal(spread) and not sector.is_color_doppler(spread)
    dop, _ = fan_video(12, 64, 80, seed=5, doppler=True)
    spread = sector.channel_spread(dop, true)
    assert sector.is_color_doppler(spread) and not sector.channels_equal(spread)
    assert sector.channels_equal(sector.channel_spread(gray_frames[..., 0], true))


def test_map_mask_matches_crop_geometry():
    mask = fan_mask(60, 90)
    crop = sector.plan_crop(mask, 30, "pixels")
    mapped = sector.map_mask(crop, mask)
    assert mapped.shape == (30, 30)
    assert 0.0 <= mapped.min() and mapped.max() <= 1.0
    area = mapped.sum() * (crop.side / 30) ** 2  # INTER_AREA preserves the covered area
    assert abs(area - mask.sum()) / mask.sum() < 0.02
