"""Running a model over a dataset: block-bounded clip inference, clip -> video probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_dataset, tiny_finetune_config
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.clips import clip_starts
from echoclr_cli.finetune.losses import classification_loss
from echoclr_cli.inference.loader import eval_loader, predict_videos


def tiny_cfg(**sections) -> Config:
    return tiny_finetune_config(epochs=1, **sections)


class SpyModel(nn.Module):
    """logit = mean of the clip; records how many clips each forward saw."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):  # (n, 3, T, H, W) -> (n,)
        self.sizes.append(x.shape[0])
        return self.scale * (x.mean(dim=(1, 2, 3, 4)) - 0.5)


# --------------------------------------------------------------------------- block-bounded inference
@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("long"), n_studies=3, videos_per_study=(1, 2), frames=(150, 200)
    )


def test_all_clips_never_exceed_block_size(long_data):
    cfg = tiny_cfg(evaluate={"clips_per_video": "all", "block_size": 8, "batch_size": 2})
    df = pd.read_csv(long_data / "manifest.csv")
    loader = eval_loader(df, long_data, "as", cfg, clip_len=4, stride=1)
    model = SpyModel()
    out = predict_videos(model, loader, torch.device("cpu"), block_size=8)
    assert max(model.sizes) <= 8 and out.max_block <= 8
    expected_clips = [
        len(clip_starts(int(n), 4, 1, "all")) for n in df.sort_values("video_id")["n_frames"]
    ]
    got = out.video.sort_values("video_id")["n_clips"].tolist()
    assert got == expected_clips and min(got) >= 37  # long videos: many more clips than a block
    assert sum(model.sizes) == sum(got)
    # the block size changes memory, never the result
    big = predict_videos(SpyModel(), loader, torch.device("cpu"), block_size=10_000)
    assert np.allclose(big.video["y_prob"], out.video["y_prob"], atol=1e-12)


def test_video_probability_is_the_mean_clip_sigmoid_and_loss_is_per_clip(long_data):
    cfg = tiny_cfg(evaluate={"clips_per_video": 3, "batch_size": 2})
    df = pd.read_csv(long_data / "manifest.csv")
    loader = eval_loader(df, long_data, "as", cfg, clip_len=4, stride=1)
    model = SpyModel()
    loss = lambda logits, y: classification_loss(logits, y, 2.0, 0.1, reduction="none")  # noqa: E731
    out = predict_videos(model, loader, torch.device("cpu"), block_size=4, loss_fn=loss)
    from echoclr_cli.data.augment import prepare_clips

    probs, losses = [], []
    for item in loader.dataset:
        clips = prepare_clips(item["x"], None, None)  # (N, 3, T, H, W)
        logits = 4.0 * (clips.mean(dim=(1, 2, 3, 4)) - 0.5)
        probs.append(float(torch.sigmoid(logits).mean()))
        losses.append(
            classification_loss(logits, item["y"].expand(len(logits)), 2.0, 0.1, reduction="none")
        )
    assert np.allclose(out.video["y_prob"], probs, atol=1e-6)
    assert out.loss == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)
    assert (out.video["n_clips"] == 3).all()


def test_model_mode_is_restored(long_data):
    cfg = tiny_cfg()
    loader = eval_loader(pd.read_csv(long_data / "manifest.csv"), long_data, "as", cfg, 4, 1)
    model = SpyModel().train()
    predict_videos(model, loader, torch.device("cpu"), block_size=4)
    assert model.training
