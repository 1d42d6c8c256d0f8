"""The frozen-feature label probe of a pretraining run (``pretrain.probe_every``): every N
epochs, the backbone's features of one centred clip per video, averaged per study, fit a kNN or
logistic-regression probe on train and report its validation AUROC per label column
(``probe_{label}_val_auroc`` in history.csv)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import ClipDataset
from echoclr_cli.data.manifest import label_columns
from echoclr_cli.errors import UserError

PROBE_BATCH = 32
PROBE_KNN = 20


@dataclass
class ProbeData:
    """Frozen-feature label probe: centred clip per video, features averaged per study."""

    train: ClipDataset
    val: ClipDataset
    labels: list[str]
    train_y: pd.DataFrame  # index study_id, one column per label (float 0/1/NaN)
    val_y: pd.DataFrame
    kind: str  # knn | logreg


def study_labels(df: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per study: the first known value of each label among its videos."""
    return df.groupby("study_id", sort=True)[labels].first()


@torch.no_grad()
def embed_studies(backbone: nn.Module, ds: ClipDataset, engine: Any) -> pd.DataFrame:
    """Backbone features (one clip per video), averaged per study: DataFrame (studies, F)."""
    backbone.eval()
    feats, studies = [], []
    for start in range(0, len(ds), PROBE_BATCH):
        items = [ds[i] for i in range(start, min(start + PROBE_BATCH, len(ds)))]
        x = torch.stack([it["x"][0] for it in items]).to(engine.device)  # (b, C, T, H, W) uint8
        x = prepare_clips(x, None, None)  # (b, 3, T, H, W)
        with engine.autocast():
            h = backbone(x)  # (b, F)
        feats.append(h.float().cpu().numpy())
        studies += [it["study_id"] for it in items]
    df = pd.DataFrame(np.concatenate(feats))
    df["study_id"] = studies
    return df.groupby("study_id", sort=True).mean()


def probe_auroc(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, kind: str
) -> float:
    """Validation AUROC of a logistic-regression / kNN probe; NaN when a split has one class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2 or len(np.unique(y_val)) < 2:
        return float("nan")
    if kind == "knn":
        # k = 20 (at most half the studies, so small sets do not vote with everyone)
        k = max(1, min(PROBE_KNN, len(y_train) // 2))
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train, y_train)
    return float(roc_auc_score(y_val, clf.predict_proba(x_val)[:, 1]))


def run_probe(backbone: nn.Module, probe: ProbeData, engine: Any) -> dict[str, float]:
    """``probe_{label}_val_auroc`` for every label column."""
    tr = embed_studies(backbone, probe.train, engine)
    va = embed_studies(backbone, probe.val, engine)
    out = {}
    for label in probe.labels:
        ytr = probe.train_y[label].reindex(tr.index)
        yva = probe.val_y[label].reindex(va.index)
        ktr, kva = ytr.notna().to_numpy(), yva.notna().to_numpy()
        out[f"probe_{label}_val_auroc"] = probe_auroc(
            tr.to_numpy()[ktr],
            ytr[ktr].to_numpy(),
            va.to_numpy()[kva],
            yva[kva].to_numpy(),
            probe.kind,
        )
    return out


def build_probe(cfg: Config, df: pd.DataFrame, data_dir: Path) -> ProbeData | None:
    """The label probe's data, or None when ``pretrain.probe_every`` is 0."""
    pc = cfg.pretrain
    if not pc.probe_every:
        return None
    labels = label_columns(df)
    tr, va = df[df["split"] == "train"], df[df["split"] == "val"]
    if not labels or tr.empty or va.empty:
        raise UserError(
            "pretrain.probe_every needs label columns and non-empty train and val splits "
            f"(labels: {labels or 'none'}, train videos: {len(tr)}, val videos: {len(va)})",
            fix="set pretrain.probe_every=0 or add labels / a val split with preprocess",
        )

    def clips(part: pd.DataFrame) -> ClipDataset:
        return ClipDataset(
            part,
            data_dir,
            None,
            pc.clip_len,
            pc.stride,
            train=False,
            clips_per_video=1,
            seed=cfg.runtime.seed,
        )

    return ProbeData(
        clips(tr), clips(va), labels, study_labels(tr, labels), study_labels(va, labels), pc.probe
    )
