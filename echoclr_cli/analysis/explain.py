"""`echoclr explain`: where a fine-tuned classifier looks, as 3-D Grad-CAM over whole videos.

Grad-CAM comes from captum's ``LayerGradCam``: for 5-D activations ``(N, C, t, h, w)`` it
averages the gradients over ``t, h, w`` (one weight per channel), sums the weighted activations
over channels and keeps the positive part; ``LayerAttribution.interpolate(..., "trilinear")``
upsamples the ``(t, h, w)`` map to the clip's ``(T, H, W)``, i.e. in time and space
(tests/test_explain.py checks both against the formula for r3d_18, r2plus1d_18 and mc3_18).
The optional second method is captum's ``IntegratedGradients`` (``|attribution|`` summed over
channels, baseline the all-zero clip).

The target is the *predicted class* of the video: the classifier has one logit ``z``, seen here
as the two-class output ``(-z, z)``, so a video predicted negative (``p < 0.5``) is explained by
the evidence for "no <task>". The video probability is the mean over its evaluation clips (as
in ``echoclr evaluate``); the maps cover the whole video with non-overlapping clips (the last
one aligned to the end, see ``clips.clip_starts(..., "all")``), averaged where clips overlap.

Per video, ``OUT/`` gets ``<video_id>_gradcam.mp4`` (cv2.VideoWriter), ``.gif`` (Pillow),
``<video_id>_strip.png`` (key frames, their overlays and the per-frame map mass, titled with the
probability) and ``<video_id>_cam.npy`` (float16 ``(T, H, W)``, the map before display
scaling). ``explain.csv`` lists every video explained with its label, probability, predicted
class, outcome (TP/FP/TN/FN) and files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.clips import clip_starts, read_clip
from echoclr_cli.data.manifest import SPLITS, load_manifest
from echoclr_cli.data.store import load_video
from echoclr_cli.errors import UserError, require_extra
from echoclr_cli.events import Progress, Status
from echoclr_cli.inference import loader as inference
from echoclr_cli.inference.run import device_and_autocast, load_classifier
from echoclr_cli.io import atomic_write, atomic_write_csv
from echoclr_cli.models import weights

THRESHOLD = 0.5  # predicted class: p >= 0.5
METHODS = ("gradcam", "ig")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
OUTCOMES = ("TP", "FP", "TN", "FN")
STRIP_FRAMES = 8
DISPLAY_MIN = 192  # overlays are scaled up (integer factor) to at least this many pixels
ALPHA = 0.45  # heat-map opacity on the frame
IG_STEPS = 16


# --------------------------------------------------------------------------- attribution
class TwoClass(nn.Module):
    """One-logit classifier -> two-class scores ``(-z, z)``: class 1 = the task is present."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        z = self.model(x).reshape(-1, 1)  # (B, 1)
        return torch.cat([-z, z], dim=1)  # (B, 2)


def attribute(
    model: nn.Module, clips: Tensor, target: int, layer: str = "layer4", method: str = "gradcam"
) -> Tensor:
    """Non-negative attribution maps ``(n, T, H, W)`` of prepared clips ``(n, 3, T, H, W)``.

    ``model`` is a :class:`echoclr_cli.models.backbones.Classifier` (``model.backbone.<layer>`` is the
    Grad-CAM layer); ``target`` 1 explains the positive class, 0 the negative one.
    """
    captum = require_extra("captum.attr", "echoclr explain")

    if method not in METHODS:
        raise UserError(f"unknown explain method '{method}'", fix=f"use {', '.join(METHODS)}")
    if layer not in LAYERS:
        raise UserError(f"unknown layer '{layer}'", fix=f"use {', '.join(LAYERS)}")
    model.eval()
    wrapped = TwoClass(model)
    with torch.enable_grad():
        if method == "gradcam":
            cam = captum.LayerGradCam(wrapped, getattr(model.backbone, layer))
            attr = cam.attribute(clips, target=target, relu_attributions=True)  # (n, 1, t, h, w)
            up = captum.LayerAttribution.interpolate(attr, tuple(clips.shape[2:]), "trilinear")
            return up[:, 0].detach().clamp_min(0)  # (n, T, H, W)
        ig = captum.IntegratedGradients(wrapped)
        attr = ig.attribute(
            clips.clone().requires_grad_(True),
            baselines=torch.zeros_like(clips),
            target=target,
            n_steps=IG_STEPS,
            internal_batch_size=max(1, clips.shape[0]),
        )  # (n, 3, T, H, W)
        return attr.detach().abs().sum(dim=1)  # (n, T, H, W)


def video_map(
    model: nn.Module,
    video: np.ndarray,
    clip_len: int,
    stride: int,
    target: int,
    device: torch.device,
    normalization: tuple[Sequence[float], Sequence[float]] | None,
    block_size: int,
    layer: str = "layer4",
    method: str = "gradcam",
) -> np.ndarray:
    """Attribution of every frame of ``video`` (T, H, W[, 3]) uint8: float32 ``(T, H, W)``.

    Non-overlapping clips cover the video; a frame in several clips gets their mean; frames a
    strided clip skips take the nearest covered frame's map.
    """
    n = int(video.shape[0])
    mean, std = normalization if normalization is not None else (None, None)
    starts = clip_starts(n, clip_len, stride, "all")
    h, w = video.shape[1:3]
    total = np.zeros((n, h, w), np.float64)
    count = np.zeros(n, np.int64)
    for b in range(0, len(starts), block_size):
        chunk = starts[b : b + block_size]
        x = torch.from_numpy(np.stack([read_clip(video, s, clip_len, stride) for s in chunk]))
        clips = prepare_clips(x.to(device), None, None, mean, std)  # (n, 3, T, H, W)
        maps = attribute(model, clips, target, layer, method).float().cpu().numpy()
        for s, m in zip(chunk, maps, strict=True):
            frames = s + stride * np.arange(clip_len)
            ok = frames < n  # a short video's clip is zero-padded past its end
            np.add.at(total, frames[ok], m[ok])
            np.add.at(count, frames[ok], 1)
    covered = np.flatnonzero(count)
    out = np.zeros((n, h, w), np.float32)
    out[covered] = (total[covered] / count[covered, None, None]).astype(np.float32)
    missing = np.flatnonzero(count == 0)
    if len(missing) and len(covered):
        nearest = covered[np.abs(missing[:, None] - covered[None, :]).argmin(axis=1)]
        out[missing] = out[nearest]
    return out


# --------------------------------------------------------------------------- rendering
def _rgb(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) or (T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
    frames = np.asarray(frames)
    return np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames


def overlay(frames: np.ndarray, cam: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Frames with the map as a jet heat map on top: ``(T, H', W', 3)`` uint8 RGB.

    ``scale`` is the map value shown as full heat (default: the video's maximum, so the maps of
    one video are comparable over time). Frames are enlarged by an integer factor up to
    :data:`DISPLAY_MIN` pixels.
    """
    import cv2

    rgb = _rgb(frames)
    top = float(scale if scale is not None else cam.max())
    heat = np.clip(cam / top, 0, 1) if top > 0 else np.zeros_like(cam)
    factor = max(1, int(np.ceil(DISPLAY_MIN / max(rgb.shape[1:3]))))
    out = []
    for f, m in zip(rgb, heat, strict=True):
        colour = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        blend = (1 - ALPHA * m[..., None]) * f + ALPHA * m[..., None] * colour
        blend = np.clip(blend, 0, 255).astype(np.uint8)
        if factor > 1:
            size = (blend.shape[1] * factor, blend.shape[0] * factor)
            blend = cv2.resize(blend, size, interpolation=cv2.INTER_LINEAR)
        out.append(blend)
    return np.stack(out)


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> bool:
    """(T, H, W, 3) RGB -> MP4 (mp4v); False when this OpenCV build cannot encode it."""
    import cv2

    tmp = path.with_name(path.stem + ".tmp.mp4")
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        tmp.unlink(missing_ok=True)
        return False
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
    finally:
        writer.release()
    if not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(path)
    return True


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = int(round(1000 / max(fps, 1e-3)))
    atomic_write(
        path,
        lambda f: images[0].save(
            f, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        ),
    )


def key_frames(n: int, k: int = STRIP_FRAMES) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def write_strip(
    path: Path, frames: np.ndarray, over: np.ndarray, cam: np.ndarray, title: str
) -> Path:
    """Key frames (top), their overlays (middle) and the map mass per frame (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = key_frames(len(frames))
    k = len(idx)
    fig = plt.figure(figsize=(1.6 * k, 4.6))
    grid = fig.add_gridspec(3, k, height_ratios=[1, 1, 0.55])
    rgb = _rgb(frames)
    for j, t in enumerate(idx):
        for row, img in ((0, rgb[t]), (1, over[t])):
            ax = fig.add_subplot(grid[row, j])
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=7)
    ax = fig.add_subplot(grid[2, :])
    mass = cam.reshape(len(cam), -1).sum(1)
    ax.plot(np.arange(len(mass)), mass / mass.max() if mass.max() > 0 else mass, lw=1.2)
    ax.scatter(idx, (mass / mass.max() if mass.max() > 0 else mass)[idx], s=10, c="C3")
    ax.set_xlabel("frame", fontsize=7)
    ax.set_ylabel("map mass", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the command
@dataclass
class ExplainResult:
    out_dir: Path
    table: pd.DataFrame  # one row per explained video
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def outcome(y: float, p: float) -> str:
    """TP/FP/TN/FN at :data:`THRESHOLD`; empty for an unknown label."""
    if not np.isfinite(y):
        return ""
    pos = p >= THRESHOLD
    return ("TP" if pos else "FN") if y == 1 else ("FP" if pos else "TN")


def select_top(pred: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` most confident videos of each outcome (TP/FP by highest p, TN/FN by lowest)."""
    parts = []
    for name in OUTCOMES:
        sub = pred[pred["outcome"] == name]
        asc = name in ("TN", "FN")
        parts.append(sub.sort_values(["y_prob", "video_id"], ascending=[asc, True]).head(k))
    return pd.concat(parts, ignore_index=True)


def run_explain(
    cfg: Config,
    *,
    run_dir: Path,
    data_dir: Path,
    out_dir: Path,
    video_ids: Sequence[str] = (),
    split: str = "test",
    top: int = 0,
    method: str = "gradcam",
    layer: str = "layer4",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExplainResult:
    """Explain ``video_ids`` of ``split`` (or the ``top`` most confident per outcome)."""
    if not video_ids and top <= 0:
        raise UserError("nothing to explain", fix="pass --video ID (repeatable) or --top K")
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'", fix=f"use {', '.join(SPLITS)}")
    if method not in METHODS or layer not in LAYERS:
        raise UserError(
            f"unknown --method '{method}' or --layer '{layer}'",
            fix=f"methods: {', '.join(METHODS)}; layers: {', '.join(LAYERS)}",
        )
    require_extra("captum.attr", "echoclr explain")  # before any work
    if cfg.runtime.tensorboard:
        from echoclr_cli.training import tb

        tb.require()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    device, autocast = device_and_autocast(cfg)
    run = load_classifier(Path(run_dir), device)  # refuses runs without a classifier head
    task = run.cfg.finetune.task
    df = load_manifest(data_dir)
    rows = df[df["split"] == split]
    where = dict(zip(df["video_id"].astype(str), df["split"], strict=True))
    for vid in video_ids:
        if vid not in set(rows["video_id"].astype(str)):
            found = f" (it is in split '{where[vid]}')" if vid in where else " (not in the dataset)"
            raise UserError(
                f"video '{vid}' is not in split '{split}' of {data_dir / 'manifest.csv'}{found}",
                fix="pass --split with the video's split, or a video_id of that split",
            )
    if top > 0 and task not in df.columns:
        raise UserError(
            f"--top needs the label '{task}' in {data_dir / 'manifest.csv'}",
            fix="use --video ID on unlabelled data",
        )
    chosen = rows[rows["video_id"].isin(video_ids)] if video_ids else rows
    if chosen.empty:
        raise UserError(f"split '{split}' has no videos", fix="pick another --split")
    ft = run.cfg.finetune
    norm = weights.input_normalization(run.cfg)
    loader = inference.eval_loader(chosen, data_dir, None, cfg, ft.clip_len, ft.stride)
    pred = inference.predict_videos(
        run.model, loader, device, cfg.evaluate.block_size, norm, autocast=autocast,
        progress=progress,
    ).video  # fmt: skip
    y_of = (
        dict(zip(chosen["video_id"], pd.to_numeric(chosen[task], errors="coerce"), strict=True))
        if task in chosen.columns
        else {}
    )
    pred["y_true"] = pred["video_id"].map(lambda v: y_of.get(v, np.nan)).astype(float)
    pred["outcome"] = [outcome(y, p) for y, p in zip(pred["y_true"], pred["y_prob"], strict=True)]
    if video_ids:
        order = {v: i for i, v in enumerate(video_ids)}
        pred = pred.sort_values("video_id", key=lambda s: s.map(order)).reset_index(drop=True)
    else:
        pred = select_top(pred[pred["outcome"] != ""], top)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not overwrite and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty", fix="pass --overwrite or another --out")
    meta = df.set_index("video_id")
    files: list[Path] = []
    notes: list[str] = []
    records = []
    for i, r in pred.iterrows():
        vid = str(r["video_id"])
        if progress:
            progress(Status(f"{method} {i + 1}/{len(pred)}: {vid}"))
        video = np.asarray(load_video(data_dir / meta.at[vid, "path"]))
        target = int(r["y_prob"] >= THRESHOLD)
        cam = video_map(
            run.model, video, ft.clip_len, ft.stride, target, device, norm,
            cfg.evaluate.block_size, layer, method,
        )  # fmt: skip
        over = overlay(video, cam)
        fps = float(meta.at[vid, "fps"]) if pd.notna(meta.at[vid, "fps"]) else 30.0
        stem = out_dir / f"{vid}_{method}"
        mp4 = stem.with_suffix(".mp4")
        if write_mp4(mp4, over, fps):
            files.append(mp4)
        else:
            notes.append(f"{vid}: MP4 not written (this OpenCV build has no mp4v encoder)")
            mp4 = None
        gif = stem.with_suffix(".gif")
        write_gif(gif, over, fps)
        cls = task if target else f"no {task}"
        label = "unknown" if not np.isfinite(r["y_true"]) else int(r["y_true"])
        title = (
            f"{vid} ({split}): p({task}) = {r['y_prob']:.3f}, predicted {cls}, label {label}"
            + (f" [{r['outcome']}]" if r["outcome"] else "")
            + f"; {method} on {layer}"
        )
        strip = write_strip(out_dir / f"{vid}_strip.png", video, over, cam, title)
        npy = out_dir / f"{vid}_cam.npy"
        atomic_write(npy, lambda f, c=cam: np.save(f, c.astype(np.float16)))
        files += [gif, strip, npy]
        if cfg.runtime.tensorboard:
            from echoclr_cli.training import tb

            tb.add_frames(out_dir / "tensorboard", f"explain/{vid}", over[key_frames(len(over), 4)])
        mass = cam.reshape(len(cam), -1).sum(1)
        records.append(
            {
                "video_id": vid,
                "study_id": r["study_id"],
                "split": split,
                "y_true": r["y_true"],
                "y_prob": r["y_prob"],
                "predicted": cls,
                "outcome": r["outcome"],
                "method": method,
                "layer": layer,
                "peak_frame": int(mass.argmax()),
                "n_frames": len(video),
                "mp4": mp4.name if mp4 else "",
                "gif": gif.name,
                "strip": strip.name,
            }
        )
    table = pd.DataFrame(records)
    atomic_write_csv(out_dir / "explain.csv", table)
    files.append(out_dir / "explain.csv")
    if top > 0:
        short = [o for o in OUTCOMES if (table.get("outcome", pd.Series()) == o).sum() < top]
        if short:
            notes.append(f"fewer than {top} videos in outcome(s) {', '.join(short)} of {split}")
    return ExplainResult(out_dir, table, files, notes)
