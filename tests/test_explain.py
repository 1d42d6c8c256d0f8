"""`echoclr explain`: 3-D Grad-CAM (captum) on the three video ResNets, whole-video maps, outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from explain_fixtures import make_runs
from helpers import TINY_WIDTH
from torch import nn
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.analysis import explain as ex
from echoclr_cli.errors import UserError
from echoclr_cli.models.backbones import ARCHS, Classifier, build_backbone

pytest.importorskip("captum")


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total mass inside ``mask`` (broadcast over frames)."""
    total = float(cam.sum())
    return float((cam * mask).sum() / total) if total > 0 else float("nan")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("explain"))


def manual_gradcam(model: Classifier, clips: torch.Tensor, sign: float) -> torch.Tensor:
    """Grad-CAM by its definition: relu(sum_c mean_thw(dz/dA_c) A_c), trilinear to (T, H, W)."""
    acts = {}
    handle = model.backbone.layer4.register_forward_hook(lambda m, i, o: acts.update(a=o))
    z = sign * model(clips)  # (n,)
    handle.remove()
    a = acts["a"]  # (n, C, t, h, w)
    (g,) = torch.autograd.grad(z.sum(), a)
    cam = F.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=clips.shape[2:], mode="trilinear")[:, 0].detach()


@pytest.mark.parametrize("arch", ARCHS)
def test_captum_gradcam_is_3d_gradcam_on_every_arch(arch):
    torch.manual_seed(0)
    model = Classifier(build_backbone(arch, TINY_WIDTH)).eval()
    clips = torch.rand(2, 3, 8, 32, 32)
    total = 0.0
    for target in (0, 1):
        got = ex.attribute(model, clips, target)
        assert got.shape == (2, 8, 32, 32)  # upsampled in time and space
        want = manual_gradcam(model, clips, 1.0 if target else -1.0)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert got.min() >= 0
        total += float(got.sum())
    assert total > 0  # the evidence of at least one class shows up


def test_integrated_gradients_map_shape():
    torch.manual_seed(0)
    model = Classifier(build_backbone("r3d_18", TINY_WIDTH)).eval()
    got = ex.attribute(model, torch.rand(1, 3, 4, 32, 32), 1, method="ig")
    assert got.shape == (1, 4, 32, 32) and got.min() >= 0 and got.sum() > 0


class Brightness(nn.Module):
    """A constructed "classifier" whose evidence is exactly where bright pixels are.

    ``backbone.layer4`` sees the clip at 1/8 resolution (t, h/8, w/8) and fires where the mean
    intensity exceeds 0.5, so its Grad-CAM is known: the bright region, coarsened.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.pool = nn.AvgPool3d((1, 8, 8))
        self.backbone.layer4 = nn.Sequential(nn.Conv3d(3, 1, 1), nn.ReLU())
        with torch.no_grad():
            self.backbone.layer4[0].weight.fill_(1 / 3)
            self.backbone.layer4[0].bias.fill_(-0.5)

    def forward(self, x):
        a = self.backbone.layer4(self.backbone.pool(x))  # (B, 1, T, h, w)
        return a.mean(dim=(1, 2, 3, 4)) * 10 - 1  # (B,)


def test_localisation_sanity_region_in_space_and_time():
    # A 24-frame video whose "label" is a bright square in the top-left corner of frames 6-13
    # only: the whole-video map (clips, upsampling, frame placement) must sit there.
    rng = np.random.default_rng(0)
    video = rng.integers(0, 60, (24, 64, 64), dtype=np.uint8)
    video[:, -1, -1] = 255  # one bright pixel per frame: per-clip min-max keeps noise dark
    video[6:14, 8:24, 8:24] = 255
    region = np.zeros(video.shape, bool)
    region[6:14, 0:32, 0:32] = True  # the square's frames, its quadrant
    cam = ex.video_map(Brightness(), video, 4, 1, 1, torch.device("cpu"), None, 4)
    assert cam.shape == video.shape
    inside = mass_inside(cam, region)
    assert inside > 0.9, inside
    assert cam[:5].sum() == 0 and cam[15:].sum() == 0  # nothing where the square is absent
    # transposing space or shifting time would fail: the mirrored region holds nothing
    assert mass_inside(cam, region[:, ::-1, ::-1]) == 0


def test_video_map_averages_overlapping_clips_and_fills_strided_gaps(monkeypatch):
    # Each clip's map is its frame index: the video map must put frame f's value at frame f.
    def fake(model, clips, target, layer, method):
        return calls.pop(0)

    video = np.zeros((11, 4, 4), np.uint8)
    starts = [0, 4, 7]  # clip_starts(11, 4, 1, "all")
    calls = [
        torch.stack(
            [torch.full((4, 4, 4), 0.0) + torch.arange(s, s + 4).view(4, 1, 1) for s in starts]
        )
    ]
    monkeypatch.setattr(ex, "attribute", fake)
    cam = ex.video_map(None, video, 4, 1, 1, torch.device("cpu"), None, 8)
    np.testing.assert_allclose(cam[:, 0, 0], np.arange(11))
    # stride 2: clips 0, 7, 13 cover 0,2,4,6 / 7,9,11,13 / 13,...,19; the frames in between
    # take the nearest covered frame's map (the earlier one on a tie)
    video = np.zeros((20, 4, 4), np.uint8)
    frames = [torch.arange(s, s + 8, 2) for s in (0, 7, 13)]
    calls = [torch.stack([f.float().view(4, 1, 1).expand(4, 4, 4) for f in frames])]
    cam = ex.video_map(None, video, 4, 2, 1, torch.device("cpu"), None, 8)
    want = [0, 0, 2, 2, 4, 4, 6, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 17, 17, 19]
    np.testing.assert_allclose(cam[:, 0, 0], want)


def test_select_top_most_confident_per_outcome():
    pred = pd.DataFrame(
        {
            "video_id": list("abcdefgh"),
            "y_prob": [0.9, 0.6, 0.8, 0.55, 0.1, 0.4, 0.2, 0.45],
            "y_true": [1, 1, 0, 0, 0, 0, 1, 1],
        }
    )
    pred["outcome"] = [ex.outcome(y, p) for y, p in zip(pred.y_true, pred.y_prob, strict=True)]
    top = ex.select_top(pred, 1)
    assert dict(zip(top.outcome, top.video_id, strict=True)) == {
        "TP": "a", "FP": "c", "TN": "e", "FN": "g"
    }  # fmt: skip
    assert ex.outcome(float("nan"), 0.9) == ""


def test_run_explain_video_writes_mp4_gif_strip(runs, tmp_path):
    import cv2
    from PIL import Image

    df = pd.read_csv(runs.data / "manifest.csv")
    vid = df[df.split == "test"].video_id.iloc[0]
    res = ex.run_explain(
        runs.cfg, run_dir=runs.finetune, data_dir=runs.data, out_dir=tmp_path, video_ids=[vid]
    )
    row = res.table.iloc[0]
    assert row.video_id == vid and row.predicted in ("lvh", "no lvh")
    n = int(df.set_index("video_id").at[vid, "n_frames"])
    assert Image.open(tmp_path / row.gif).n_frames == n
    assert (tmp_path / row.strip).stat().st_size > 0
    cam = np.load(tmp_path / f"{vid}_cam.npy")
    assert cam.shape[0] == n and np.isfinite(cam).all()
    if row.mp4:  # absent only when this OpenCV build has no encoder (then a note says so)
        cap = cv2.VideoCapture(str(tmp_path / row.mp4))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    else:
        assert res.notes
    # the probability shown is the evaluation probability of the run
    from echoclr_cli.inference.predict import predict

    pred = predict(runs.cfg, runs.finetune, runs.data, tmp_path / "p" / "p.csv").video
    assert abs(pred.set_index("video_id").at[vid, "y_prob"] - row.y_prob) < 1e-6


def test_run_explain_top_k_and_layer_and_tensorboard(runs, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = runs.cfg.model_copy(deep=True)
    cfg.runtime.tensorboard = True
    res = ex.run_explain(
        cfg, run_dir=runs.finetune, data_dir=runs.data, out_dir=tmp_path / "a", split="val",
        top=1, layer="layer3",
    )  # fmt: skip
    t = res.table
    assert 1 <= len(t) <= 4 and t.outcome.is_unique and set(t.outcome) <= set(ex.OUTCOMES)
    assert (t.layer == "layer3").all()
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
    vid = t.video_id.iloc[0]
    other = ex.run_explain(
        runs.cfg, run_dir=runs.finetune, data_dir=runs.data, out_dir=tmp_path / "b",
        split="val", video_ids=[vid],
    )  # fmt: skip
    assert other.table.layer.iloc[0] == "layer4"
    a, b = np.load(tmp_path / "a" / f"{vid}_cam.npy"), np.load(tmp_path / "b" / f"{vid}_cam.npy")
    assert not np.allclose(a, b)


def test_bad_input_one_line(runs, tmp_path):
    df = pd.read_csv(runs.data / "manifest.csv")
    train_vid = df[df.split == "train"].video_id.iloc[0]
    with pytest.raises(UserError, match="no classifier head"):
        ex.run_explain(runs.cfg, run_dir=runs.pretrain, data_dir=runs.data, out_dir=tmp_path, top=1)
    with pytest.raises(UserError, match="is in split 'train'"):
        ex.run_explain(
            runs.cfg, run_dir=runs.finetune, data_dir=runs.data, out_dir=tmp_path,
            video_ids=[train_vid],
        )  # fmt: skip
    with pytest.raises(UserError, match="not in the dataset"):
        ex.run_explain(
            runs.cfg,
            run_dir=runs.finetune,
            data_dir=runs.data,
            out_dir=tmp_path,
            video_ids=["nope"],
        )
    with pytest.raises(UserError, match="nothing to explain"):
        ex.run_explain(runs.cfg, run_dir=runs.finetune, data_dir=runs.data, out_dir=tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        cli.app,
        ["explain", str(runs.finetune), "--data", str(runs.data), "--video", train_vid,
         "--out", str(tmp_path / "cli"), "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 1 and "is in split 'train'" in res.output
    assert "Traceback" not in res.output


def test_cli_explain_top(runs, tmp_path):
    res = CliRunner().invoke(
        cli.app,
        ["explain", str(runs.finetune), "--data", str(runs.data), "--split", "test", "--top", "1",
         "--method", "ig", "--out", str(tmp_path), "--device", "cpu",
         "--set", "evaluate.clips_per_video=2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    t = pd.read_csv(tmp_path / "explain.csv")
    assert (t["method"] == "ig").all() and len(t) >= 1
