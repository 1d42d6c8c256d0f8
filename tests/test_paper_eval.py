"""Paper-fidelity options of preprocessing and evaluation (issue 12, points 5, 8, 9).

preprocess.resize (whole_frame | sector_crop; the echoclr layout is never cropped),
preprocess.short_videos (pad | skip), evaluate.clip_starts (published | linspace),
evaluate.scaling (video | clip), evaluate.bootstrap_unit (study | item).
"""

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from preprocess_fixtures import fan_video, small_cfg, write_avi
from scipy.stats import norm

from echoclr_cli.data import readers
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import ClipDataset, collate_clips
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.data.store import load_video, save_video
from echoclr_cli.data.video_reader import read_video
from echoclr_cli.inference.loader import predict_videos
from echoclr_cli.metrics import aggregate, bootstrap, splits
from echoclr_cli.metrics import core as metrics
from echoclr_cli.metrics.compare import compare_runs
from echoclr_cli.preprocess import sector
from echoclr_cli.preprocess.run import preprocess
from echoclr_cli.preprocess.worker import WorkerContext, _mask_and_crop


# --------------------------------------------------------------------------- preprocess.resize
def _fan(h=60, w=80, t=6, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:50, 30:70] = True  # a sector far from square and off-centre
    return frames, mask


def test_whole_frame_resizes_the_whole_masked_frame():
    frames, mask = _fan()
    out = sector.apply_crop(frames, sector.plan_whole(mask, 32, "pixels"))
    keep = cv2.resize(mask.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA) >= 0.5
    for frame, got in zip(frames, out, strict=True):
        ref = cv2.resize(frame * mask, (32, 32), interpolation=cv2.INTER_AREA) * keep
        assert np.array_equal(got, ref)
    cropped = sector.apply_crop(frames, sector.plan_crop(mask, 32, "pixels"))
    assert not np.array_equal(out, cropped)  # the two rules differ on this frame
    # the sector keeps its place in the frame (no crop): its columns 30..70 of 80 -> 12..28
    cols = np.flatnonzero(out.max(axis=(0, 1)) > 0)
    assert 11 <= cols.min() <= 13 and 27 <= cols.max() <= 28


def test_whole_frame_at_the_output_size_is_identity_apart_from_mask():
    frames, mask = _fan(h=40, w=40)
    out = sector.apply_crop(frames, sector.plan_whole(mask, 40, "pixels"))
    assert np.array_equal(out, frames * mask)
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    out = sector.apply_crop(rgb, sector.plan_whole(mask, 40, "pixels"))
    assert np.array_equal(out, rgb * mask[..., None])


def _ctx(resize, size=32):
    return WorkerContext("/nonexistent", "echoclr", readers.ReadOptions(100, 2, 0, 30), size,
                         "gray", False, False, False, {}, set(), set(), "study", set(),
                         resize=resize)  # fmt: skip


def test_worker_resize_option(tmp_path):
    frames, _ = fan_video(12, 64, 96, seed=3)
    raw = read_video(write_avi(tmp_path / "v.avi", frames), _ctx("whole_frame").opts)
    whole, crop_w, _ = _mask_and_crop(raw, _ctx("whole_frame"))
    cropped, crop_c, _ = _mask_and_crop(raw, _ctx("sector_crop"))
    assert crop_w.whole and not crop_c.whole and whole.shape == cropped.shape == (12, 32, 32)
    gray = sector.to_gray(raw.frames)
    assert np.array_equal(cropped, sector.apply_crop(gray, sector.plan_crop(crop_c.mask, 32, "")))
    assert np.array_equal(whole, sector.apply_crop(gray, sector.plan_whole(crop_w.mask, 32, "")))
    assert not np.array_equal(whole, cropped)


def _echoclr_layout(tmp_path, n=3, side=112):
    root = tmp_path / "echoclr"
    rows = []
    for i in range(n):
        frames, _ = fan_video(20, side, side, seed=10 + i)
        write_avi(root / "videos" / f"vid{i}.avi", frames)
        rows.append({"plax_prob": 0.9, "fpath": f"vid{i}.avi", "acc_num": f"ACC{i}",
                     "av_stenosis": "Severe" if i % 2 else "None", "video_num": i})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


@pytest.mark.parametrize("resize", ["whole_frame", "sector_crop"])
def test_echoclr_layout_is_never_cropped(tmp_path, resize):
    """A 112 x 112 video of the published layout is stored pixel-identical apart from the
    mask, whatever preprocess.resize says."""
    root = _echoclr_layout(tmp_path)
    cfg = small_cfg(size=112, color="gray", resize=resize, skip_color_doppler=False)
    res = preprocess(cfg, root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    assert res.layout == "echoclr" and len(df) == 3
    assert all(load_video(tmp_path / "out" / p).shape == (20, 112, 112) for p in df["path"])
    opts = readers.ReadOptions(cfg.preprocess.max_frames, 2, 0, 30)
    for i in range(3):
        raw = read_video(root / "videos" / f"vid{i}.avi", opts)
        gray = sector.to_gray(raw.frames)
        mask, _ = sector.detect_sector(gray)
        match = [np.array_equal(load_video(tmp_path / "out" / p), gray * mask) for p in df["path"]]
        assert sum(match) == 1, i
        # a sector crop would have changed it: the fan does not fill the frame
        assert not np.array_equal(
            gray * mask, sector.apply_crop(gray, sector.plan_crop(mask, 112, ""))
        )


# --------------------------------------------------------------------------- short videos
def test_short_videos_pad_keeps_and_pads_skip_drops(tmp_path):
    root = tmp_path / "raw"
    for i, t in enumerate((5, 20)):
        frames, _ = fan_video(t, 64, 80, seed=i)
        write_avi(root / f"P{i}" / f"S{i}" / "a.avi", frames)
    kw = {"min_frames": 16, "skip_color_doppler": False}
    pad = preprocess(small_cfg(**kw), root, tmp_path / "pad")
    df = load_manifest(tmp_path / "pad")
    assert pad.n_videos == 2 and sorted(df["n_frames"]) == [5, 20]
    short = df[df["n_frames"] == 5]
    ds = ClipDataset(short, tmp_path / "pad", None, clip_len=16, train=True)
    x = ds[0]["x"]  # (1, 16, H, W): 5 frames then zeros
    assert x.shape[1] == 16 and (x[:, 5:] == 0).all() and x[:, :5].any()
    ev = ClipDataset(short, tmp_path / "pad", None, clip_len=16, train=False, starts="published")
    assert ev[0]["x"].shape[:3] == (4, 1, 16) and (ev[0]["x"][:, :, 5:] == 0).all()
    skip = preprocess(small_cfg(**kw, short_videos="skip"), root, tmp_path / "skip")
    assert skip.n_videos == 1 and skip.skipped_by_reason == {"too_few_frames": 1}


# --------------------------------------------------------------------------- evaluation clips
def _published_eval(x, clip_len, rate, num_clips):
    """The published finetune/dataset.py evaluation branch, transcribed: (T,H,W,C) -> stacked
    clips (C, N, L, H, W) uint8, and the min-max over the whole stack (all clips of the video)."""
    n = x.shape[0]
    if n >= clip_len * rate + num_clips:
        d = n - clip_len * rate
        starts = np.arange(0, d, d // num_clips)[:num_clips]
        x = np.stack([x[s : s + clip_len * rate : rate] for s in starts], axis=0)
    elif n > clip_len * rate:
        x = np.stack([x[::rate][:clip_len]] * num_clips, axis=0)
    else:
        x = x[::rate]
        x = np.pad(x, ((0, clip_len - x.shape[0]), (0, 0), (0, 0), (0, 0)), mode="constant")
        x = np.stack([x] * num_clips, axis=0)
    clips = np.transpose(x, (4, 0, 1, 2, 3))  # (C, N, L, H, W)
    x = clips.astype(np.float64)
    return clips, (x - x.min()) / (x.max() - x.min())


def _videos(tmp_path, lengths, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, t in enumerate(lengths):
        # frame k holds values around 10 + 2k: the start of every clip is visible in the data
        base = (10 + 2 * np.arange(t))[:, None, None]
        v = (base + rng.integers(0, 2, (t, 3, 4))).astype(np.uint8)
        save_video(tmp_path / f"v{i}.npy", v)
        rows.append({"video_id": f"v{i:03d}", "study_id": f"s{i:03d}", "patient_id": f"p{i:03d}",
                     "path": f"v{i}.npy", "n_frames": t})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("num_clips", [4, 1])
def test_published_clips_and_video_scaling_match_the_published_code(tmp_path, stride, num_clips):
    lengths = list(range(1, 60)) + [100, 117]  # T < L, T == L, T - L < 4, long videos
    df = _videos(tmp_path, lengths)
    ds = ClipDataset(df, tmp_path, None, clip_len=16, stride=stride, train=False,
                     clips_per_video=num_clips, starts="published", scaling="video")  # fmt: skip
    for i, t in enumerate(lengths):
        item = ds[i]
        raw = np.load(tmp_path / f"v{i}.npy")[..., None]  # (T, H, W, 1)
        clips, ref = _published_eval(raw, 16, stride, num_clips)  # (1, N, 16, H, W)
        x = item["x"]  # (N, 1, 16, H, W) uint8
        assert np.array_equal(x.numpy().transpose(1, 0, 2, 3, 4), clips), t
        scaled = prepare_clips(x.float(), None, None, bounds=item["bounds"])  # (N, 3, 16, H, W)
        assert np.allclose(scaled[:, 0].numpy(), ref[0], atol=1e-6), t
        assert np.allclose(scaled[:, 2].numpy(), ref[0], atol=1e-6)


def test_linspace_and_clip_scaling_keep_the_previous_behaviour(tmp_path):
    df = _videos(tmp_path, [10, 40, 100])
    old = ClipDataset(df, tmp_path, None, clip_len=16, train=False)
    new = ClipDataset(df, tmp_path, None, clip_len=16, train=False, starts="linspace",
                      scaling="clip")  # fmt: skip
    for i in range(3):
        assert "bounds" not in new[i] and torch.equal(old[i]["x"], new[i]["x"])
    pub = ClipDataset(df, tmp_path, None, clip_len=16, train=False, starts="published")
    assert not torch.equal(pub[2]["x"], old[2]["x"])  # 100 frames: [0,21,42,63] vs [0,28,56,84]
    with pytest.raises(Exception, match="clip_starts"):
        ClipDataset(df, tmp_path, None, clip_len=16, train=False, starts="middle")


class _MeanModel(torch.nn.Module):
    def forward(self, x):  # (n, 3, T, H, W) -> (n, 1): the clip's mean value as the logit
        return x.mean(dim=(1, 2, 3, 4))[:, None]


@pytest.mark.parametrize("scaling", ["video", "clip"])
def test_video_scaling_does_not_depend_on_block_size(tmp_path, scaling):
    df = _videos(tmp_path, [30, 50, 70], seed=1)
    ds = ClipDataset(df, tmp_path, None, clip_len=16, train=False, starts="published",
                     scaling=scaling)  # fmt: skip
    batches = [collate_clips([ds[i] for i in range(3)])]
    probs = [predict_videos(_MeanModel(), batches, torch.device("cpu"), b).video["y_prob"]
             for b in (1, 3, 12)]  # fmt: skip
    assert np.allclose(probs[0], probs[1]) and np.allclose(probs[0], probs[2])
    ref = []
    for i in range(3):
        x = ds[i]["x"].float()  # (N, 1, T, H, W)
        if scaling == "video":
            lo, hi = x.min(), x.max()
            s = (x - lo) / (hi - lo)
        else:
            lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)
            hi = x.amax(dim=(1, 2, 3, 4), keepdim=True)
            s = (x - lo) / (hi - lo)
        ref.append(float(torch.sigmoid(s.mean(dim=(1, 2, 3, 4)).double()).mean()))
    assert np.allclose(probs[0], ref, atol=1e-6)


# --------------------------------------------------------------------------- cluster bootstrap
def test_weighted_metrics_equal_the_expanded_sample():
    rng = np.random.default_rng(0)
    n = 40
    y, p = rng.integers(0, 2, n), np.round(rng.random(n), 1)  # ties
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    w = rng.integers(0, 3, (6, n))
    names = ["auroc", "ap", "aupr_trapz", "f1", "mcc", "sensitivity@youden", "n", "prevalence"]
    got = bootstrap.weighted_metrics(y, p, w, names, {"youden": 0.45})
    for b in range(6):
        idx = np.repeat(np.arange(n), w[b])
        ref = metrics.compute_metrics(y[idx], p[idx], {"youden": 0.45})
        for k in names:
            assert np.isclose(got[k][b], ref[k], equal_nan=True, atol=1e-12), (k, b)


def _duplicated(n_studies=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n_studies // 3), np.zeros(n_studies - n_studies // 3)])
    p = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n_studies), 0, 1)
    rows = [{"video_id": f"v{s:03d}_{j}", "study_id": f"s{s:03d}", "patient_id": f"s{s:03d}",
             "y_true": int(y[s]), "y_prob": float(p[s])}
            for s in range(n_studies) for j in range(k)]  # fmt: skip
    return pd.DataFrame(rows)


def test_study_cluster_ci_matches_study_level_and_is_wider_than_naive():
    video = aggregate.aggregate(_duplicated(), "video")
    study = aggregate.aggregate(video, "study")
    names = ["auroc", "ap", "f1"]
    cl, _ = splits.evaluate_frame(video, None, 300, 0.95, 7, unit="study")
    naive, _ = splits.evaluate_frame(video, None, 300, 0.95, 7, unit="item")
    st, _ = splits.evaluate_frame(study, None, 300, 0.95, 7)
    for k in names:
        assert cl[k]["ci_low"] == pytest.approx(st[k]["ci_low"], abs=1e-12)
        assert cl[k]["ci_high"] == pytest.approx(st[k]["ci_high"], abs=1e-12)
        assert cl[k]["ci_unit"] == "study" and naive[k]["ci_unit"] == "video"
    width = lambda t: t["auroc"]["ci_high"] - t["auroc"]["ci_low"]  # noqa: E731
    assert width(cl) > 1.3 * width(naive)
    assert cl["auroc"]["value"] == naive["auroc"]["value"] == st["auroc"]["value"]


def test_cluster_bootstrap_coverage_sanity():
    """Correlated videos within studies: the study-cluster 95% CI covers the true video-level
    AUROC about 95% of the time; the naive video bootstrap clearly less."""
    rng = np.random.default_rng(1)
    mu, noise, k, reps = 1.0, 0.3, 4, 120
    truth = norm.cdf(mu / np.sqrt(2 * (1 + noise**2)))
    hit = {"study": 0, "item": 0}
    studies = np.repeat(np.arange(60), k)
    for _ in range(reps):
        ys = np.r_[np.ones(20, int), np.zeros(40, int)]
        s = rng.normal(mu * ys, 1.0)
        p = s[studies] + rng.normal(0, noise, len(studies))
        y = ys[studies]
        for unit in hit:
            ci = bootstrap.bootstrap_ci(
                y,
                p,
                ["auroc"],
                n=200,
                seed=int(rng.integers(1 << 30)),
                clusters=studies if unit == "study" else None,
            )["auroc"]
            hit[unit] += ci[0] <= truth <= ci[1]
    assert hit["study"] / reps >= 0.82  # percentile intervals under-cover a little at n=60
    assert hit["item"] / reps <= hit["study"] / reps - 0.15


def test_evaluate_predictions_uses_the_configured_unit():
    from echoclr_cli.config.schema import Config

    cfg = Config()
    cfg.evaluate.bootstrap = 100
    out = splits.evaluate_predictions({"test": _duplicated()}, cfg)
    # default: patients at both levels (here one study per patient: the study numbers)
    assert out["test"]["video"]["auroc"]["ci_unit"] == "patient"
    assert out["test"]["study"]["auroc"]["ci_unit"] == "patient"
    cfg.evaluate.bootstrap_unit = "study"
    st = splits.evaluate_predictions({"test": _duplicated()}, cfg)
    assert st["test"]["video"]["auroc"]["ci_unit"] == "study"
    assert st["test"]["study"]["auroc"]["ci_unit"] == "study"
    for level in ("video", "study"):
        cells = (st["test"][level]["auroc"], out["test"][level]["auroc"])
        assert [c["ci_low"] for c in cells][0] == pytest.approx(cells[1]["ci_low"], abs=1e-12)
    cfg.evaluate.bootstrap_unit = "item"
    out2 = splits.evaluate_predictions({"test": _duplicated()}, cfg)
    assert out2["test"]["video"]["auroc"]["ci_unit"] == "video"
    assert out2["test"]["study"]["auroc"]["ci_unit"] == "study"  # the rows: studies
    assert out2["test"]["study"]["auroc"]["ci_low"] == pytest.approx(
        out["test"]["study"]["auroc"]["ci_low"], abs=1e-12
    )  # one study per patient: the same resamples
    assert out2["test"]["video"]["auroc"]["ci_low"] > out["test"]["video"]["auroc"]["ci_low"]


def test_compare_runs_says_its_unit_and_clusters_videos():
    a = _duplicated(seed=0)
    b = a.assign(
        y_prob=np.clip(
            a["y_prob"] + np.repeat(np.random.default_rng(5).normal(0, 0.15, len(a) // 3), 3), 0, 1
        )
    )
    va, vb = aggregate.aggregate(a, "video"), aggregate.aggregate(b, "video")
    sa, sb = aggregate.aggregate(va, "study"), aggregate.aggregate(vb, "study")
    vid = compare_runs(va, vb, n=300, seed=2, on="video_id", unit="study")
    naive = compare_runs(va, vb, n=300, seed=2, on="video_id", unit="item")
    st = compare_runs(sa, sb, n=300, seed=2, on="study_id", unit="study")
    pat = compare_runs(va, vb, n=300, seed=2, on="video_id")  # default: patient clusters
    assert vid["bootstrap"]["unit"] == "study" and naive["bootstrap"]["unit"] == "video"
    assert vid["delong"]["unit"] == "study" and naive["delong"]["unit"] == "video"
    assert st["bootstrap"]["unit"] == "study" and st["delong"]["unit"] == "study"
    assert pat["bootstrap"]["unit"] == pat["delong"]["unit"] == "patient"
    assert pat["delong"]["test"] == "delong-obuchowski (patient clusters)"
    assert naive["delong"]["test"] == "delong"
    # one study per patient: patient clusters are the study clusters
    assert pat["bootstrap"]["ci_low"] == pytest.approx(vid["bootstrap"]["ci_low"], abs=1e-12)
    # duplicated videos: the cluster bootstrap is the study-level one; the naive one is narrower
    assert vid["bootstrap"]["ci_low"] == pytest.approx(st["bootstrap"]["ci_low"], abs=1e-12)
    assert vid["bootstrap"]["ci_high"] == pytest.approx(st["bootstrap"]["ci_high"], abs=1e-12)
    nw = naive["bootstrap"]["ci_high"] - naive["bootstrap"]["ci_low"]
    assert nw < vid["bootstrap"]["ci_high"] - vid["bootstrap"]["ci_low"]
