"""Decode video files (AVI, MP4, ...) with OpenCV into uint8 RGB frames: frames are counted as
decoded (the header count is not trusted); FFmpeg's messages are captured, never printed, and
summarised in the skip detail."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# FFmpeg inside OpenCV prints to fd 2 on a bad file; silence it (the reason goes to skipped.csv).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from echoclr_cli.data.bounds import pixel_excess  # noqa: E402
from echoclr_cli.data.readers import RawVideo, ReadOptions, SkipVideo, regular_size  # noqa: E402


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (where OpenCV/FFmpeg native code prints) to a temp file for the
    duration; yields a list that receives the captured lines afterwards."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): nothing to silence
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(65536).decode(errors="replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())


def _noise(lines: list[str]) -> str:
    """Short summary of captured decoder messages for a skip detail."""
    if not lines:
        return ""
    return f" (decoder printed {len(lines)} line(s), first: {lines[0][:120]!r})"


def read_video(path: Path, opts: ReadOptions) -> RawVideo:
    """Decode AVI/MP4 with OpenCV; frames are counted as decoded (the header count is not
    trusted). (T,H,W,3) RGB uint8, T <= max_frames. Decoder messages are captured, never printed;
    a skip reason mentions them. Width x height x 3 x the frames to decode (the header's count,
    at most max_frames) must fit ``max_pixels`` (else ``too_large``), checked when the file is
    opened and again on the first decoded frame."""
    regular_size(path)  # a FIFO or device is never opened
    with captured_stderr() as noise:
        try:
            return _read_video(path, opts)
        except SkipVideo as e:
            err = e
    raise SkipVideo(err.reason, err.detail + _noise(noise).replace(str(path), "<file>"))


def _read_video(path: Path, opts: ReadOptions) -> RawVideo:
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
        n = int(header) if math.isfinite(header) and header > 0 else opts.max_frames
        n = min(n, opts.max_frames)  # the header count is not trusted beyond what is decoded
        size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        _budget(*size, n, opts)
        frames, ended = [], False
        while len(frames) < opts.max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                ended = True
                break
            if not frames:
                _budget(frame.shape[1], frame.shape[0], n, opts)
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


def _budget(width: float, height: float, frames: int, opts: ReadOptions) -> None:
    """``too_large`` when width x height x frames x 3 exceeds ``max_pixels`` (unknown sizes:
    checked on the first frame)."""
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        return
    excess = pixel_excess(int(width), int(height), frames, 3, opts.max_pixels)
    if excess:
        raise SkipVideo("too_large", excess)
