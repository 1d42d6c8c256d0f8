"""`echoclr embed`: frozen backbone features of any run or init, a 2-D map and a label probe.

Sources are run dirs (pretrain or fine-tune: ``checkpoints/best.pt`` else ``last.pt``, read with
``weights_only=True``) or the inits ``random`` / ``kinetics`` (built from ``model.arch`` /
``model.width`` of the resolved config). For each source, every video of the chosen splits is
cut into ``evaluate.clips_per_video`` evenly spaced clips (as in evaluation), the backbone
features of the clips are averaged per video, and the video features are averaged per study.

Written per source under ``OUT/<source>/``:

- ``embeddings_video.npy`` (n_videos, F) float32 and ``index_video.csv`` (row order: ``row,
  video_id, study_id, split, site, <labels>, map_x, map_y``; hashed ids only);
- ``embeddings_study.npy`` (n_studies, F) and ``index_study.csv`` (``row, study_id, split, site,
  <labels>``; a study's label is the first known value among its videos);
- ``map.png``: the video embeddings in 2-D (UMAP when umap-learn is installed, else PCA), one
  panel coloured by each label, by split and by site (``site`` column of the manifest, else
  ``external`` for ``ext_test`` and ``internal`` otherwise);
- ``summary.json``: per colouring the cosine silhouette of the full embedding and a kNN score
  (AUROC of the mean label of the k nearest videos of *other* studies, so a study's own videos
  never vote for it);
- with ``probe``: a logistic-regression probe (standardised features) fitted on the train
  videos, applied to val/test/ext_test; video and study (mean of video probabilities) AUROC/AP
  with stratified bootstrap CIs from ``echoclr_cli.metrics.bootstrap`` (``evaluate.bootstrap``,
  ``evaluate.ci``), in ``probe.json``.

``OUT/probe.csv`` and ``OUT/summary.csv`` gather all sources in one table, so inits are compared
on the same split with the same settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from echoclr_cli import runtime
from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.manifest import SPLITS, label_columns, load_manifest
from echoclr_cli.errors import UserError, find_extra, require_extra
from echoclr_cli.events import EvalBatch, Progress, Status
from echoclr_cli.inference import loader as inference
from echoclr_cli.inference.run import INITS, Encoder, device_and_autocast, load_encoder
from echoclr_cli.io import atomic_write, atomic_write_csv, atomic_write_json, replace_own_files
from echoclr_cli.metrics import core as metrics
from echoclr_cli.metrics import splits

MAP_METHODS = ("auto", "umap", "pca")
KNN_K = 10
PROBE_SPLITS = ("val", "test", "ext_test")
PROBE_COLUMNS = ("source", "label", "split", "level", "metric", "value", "ci_low", "ci_high", "n")


# --------------------------------------------------------------------------- features
@torch.no_grad()
def embed_videos(
    enc: Encoder, cfg: Config, df: pd.DataFrame, data_dir: Path, progress: Progress | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Mean backbone feature of each video's evaluation clips: ``((n, F) float32, ids frame)``.

    The ids frame has ``video_id, study_id, patient_id`` in the order of the features (the order
    of ``df``). At most ``evaluate.block_size`` clips go through the backbone at once.
    """
    device, autocast = device_and_autocast(cfg)
    backbone = enc.backbone.to(device).eval()
    mean, std = enc.normalization if enc.normalization is not None else (None, None)
    loader = inference.eval_loader(df, data_dir, None, cfg, enc.clip_len, enc.stride)
    feats, ids = [], []
    block = cfg.evaluate.block_size
    for b, batch in enumerate(loader):
        x, n_clips = batch["x"], batch["n_clips"]  # (sum N, C, T, H, W) uint8, (B,)
        out = []
        for start in range(0, x.shape[0], block):
            clips = prepare_clips(x[start : start + block].to(device), None, None, mean, std)
            with autocast():
                out.append(backbone(clips).float().cpu())  # (n, F)
        per_clip = torch.cat(out)  # (sum N, F)
        feats += [c.mean(0) for c in torch.split(per_clip, n_clips.tolist())]
        ids.append(pd.DataFrame({k: batch[k] for k in ("video_id", "study_id", "patient_id")}))
        if progress:
            progress(EvalBatch(batch=b + 1, batches=runtime.loader_len(loader)))
    if not feats:
        raise UserError("no videos to embed", fix="check --split against the manifest's splits")
    x = torch.stack(feats).numpy().astype(np.float32)
    ids = pd.concat(ids, ignore_index=True)
    # the dataset iterates in its own order (study_id, video_id): back to the order of df
    pos = pd.Series(np.arange(len(ids)), index=ids["video_id"].astype(str))
    order = pos.loc[df["video_id"].astype(str)].to_numpy()
    return x[order], ids.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------- maps and summaries
def site_column(df: pd.DataFrame) -> pd.Series:
    """The manifest's ``site`` column when present, else external for ext_test, internal otherwise."""
    if "site" in df.columns:
        return df["site"].astype(str)
    return df["split"].map(lambda s: "external" if s == "ext_test" else "internal")


def map_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``x: (n, F)``: ``((n, 2), method used)``.

    ``auto`` = UMAP when umap-learn is importable (and n >= 5), else PCA; ``umap`` refuses to run
    without umap-learn.
    """
    if method not in MAP_METHODS:
        raise UserError(f"unknown map method '{method}'", fix=f"use {', '.join(MAP_METHODS)}")
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    umap = None  # umap-learn: optional and slow to import
    if method == "umap":
        umap = require_extra("umap", "embed --map umap", alternative="use --map pca")
    elif method == "auto" and len(x) >= 5:
        umap = find_extra("umap")
    if umap is not None and len(x) >= 5:
        reducer = umap.UMAP(
            n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1, init="random"
        )
        return reducer.fit_transform(z).astype(np.float32), "umap"
    from sklearn.decomposition import PCA

    k = min(2, *z.shape)
    coords = np.zeros((len(z), 2), np.float32)
    coords[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(z)
    return coords, "pca"


def knn_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = KNN_K) -> float:
    """AUROC of the mean label of the ``k`` cosine-nearest items of other groups (studies)."""
    from sklearn.neighbors import NearestNeighbors

    if len(np.unique(y)) < 2:
        return math.nan
    extra = int(pd.Series(groups).value_counts().max())
    n_query = min(len(x), k + extra)
    nn_ = NearestNeighbors(n_neighbors=n_query, metric="cosine").fit(x)
    _, idx = nn_.kneighbors(x)  # (n, n_query) includes the item itself
    scores = np.empty(len(x))
    for i, row in enumerate(idx):
        other = [j for j in row if groups[j] != groups[i]][:k]
        scores[i] = y[other].mean() if other else np.nan
    keep = np.isfinite(scores)
    if len(np.unique(y[keep])) < 2:
        return math.nan
    return float(metrics.auroc_rank(y[keep][None].astype(np.int64), scores[keep][None])[0])


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Cosine silhouette of ``labels`` on ``x`` (NaN with fewer than 2 groups)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(x) < 3:
        return math.nan
    return float(silhouette_score(x, labels, metric="cosine"))


def summarize(x: np.ndarray, index: pd.DataFrame, colourings: list[str]) -> dict[str, Any]:
    """Silhouette and kNN AUROC (binary colourings) per colouring, on the known rows."""
    out: dict[str, Any] = {}
    for col in colourings:
        known = index[col].notna().to_numpy()
        vals = index.loc[known, col].astype(str).to_numpy()
        entry = {"n": int(known.sum()), "groups": int(len(np.unique(vals)))}
        entry["silhouette"] = _clean(silhouette(x[known], vals))
        if set(np.unique(vals)) <= {"0", "1", "0.0", "1.0"}:
            y = pd.to_numeric(index.loc[known, col]).to_numpy(np.float64)
            groups = index.loc[known, "study_id"].to_numpy()
            entry["knn_auroc"] = _clean(knn_auroc(x[known], y, groups))
        out[col] = entry
    return out


def plot_map(
    coords: np.ndarray, index: pd.DataFrame, colourings: list[str], title: str, path: Path
) -> Path:
    """One scatter panel per colouring of the 2-D map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(colourings)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, col in zip(axes[0], colourings, strict=True):
        vals = index[col].map(lambda v: "unknown" if pd.isna(v) else _label_text(v))
        for i, v in enumerate(sorted(vals.unique())):
            m = (vals == v).to_numpy()
            colour = "lightgrey" if v == "unknown" else f"C{i}"
            ax.scatter(
                coords[m, 0], coords[m, 1], s=8, alpha=0.7, c=colour, label=f"{v} ({m.sum()})"
            )
        ax.set_title(col)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _label_text(v: Any) -> str:
    try:
        return str(int(float(v)))
    except (TypeError, ValueError):
        return str(v)


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- probe
def probe(
    x: np.ndarray, index: pd.DataFrame, label: str, cfg: Config
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Logistic-regression probe on the train videos; AUROC/AP with CIs on the other splits.

    Returns the long table (``split, level, metric, value, ci_low, ci_high, n``) and the
    ``metrics.json``-shaped dict of ``metrics.evaluate_predictions`` (thresholds from val).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = pd.to_numeric(index[label], errors="coerce")
    train = (index["split"] == "train").to_numpy() & y.notna().to_numpy()
    if len(np.unique(y[train])) < 2:
        raise UserError(
            f"--probe {label}: the train split has {int(train.sum())} labelled videos of one class",
            fix="probe a label with both classes in train (or embed the train split too)",
        )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(x[train], y[train].astype(int))
    prob = clf.predict_proba(x)[:, 1]
    by_split = {}
    for split in PROBE_SPLITS:
        m = (index["split"] == split).to_numpy() & y.notna().to_numpy()
        if m.any():
            by_split[split] = pd.DataFrame(
                {
                    "video_id": index.loc[m, "video_id"].to_numpy(),
                    "study_id": index.loc[m, "study_id"].to_numpy(),
                    "patient_id": index.loc[m, "patient_id"].to_numpy(),
                    "y_true": y[m].to_numpy(np.float64),
                    "y_prob": prob[m],
                }
            )
    if not by_split:
        raise UserError(
            f"--probe {label}: no labelled videos in {', '.join(PROBE_SPLITS)} to evaluate",
            fix="embed val/test too (--split train,val,test)",
        )
    result = splits.evaluate_predictions(by_split, cfg)
    table = splits.metrics_to_frame(result)
    table = table[table["metric"].isin(["auroc", "ap", "n", "n_pos"])].reset_index(drop=True)
    return table, result


# --------------------------------------------------------------------------- the command
@dataclass
class EmbedResult:
    out_dir: Path
    sources: list[Encoder]
    map_method: dict[str, str]  # source -> umap | pca
    summary: pd.DataFrame  # source, colouring, n, groups, silhouette, knn_auroc
    probe: pd.DataFrame | None  # source, label, split, level, metric, value, ci_low, ci_high, n
    files: list[Path] = field(default_factory=list)


def _source_names(encs: list[Encoder]) -> None:
    seen: dict[str, int] = {}
    for e in encs:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", e.name) or "run"
        seen[base] = seen.get(base, 0) + 1
        e.name = base if seen[base] == 1 else f"{base}_{seen[base]}"


def run_embed(
    cfg: Config,
    *,
    sources: Sequence[str | Path],
    data_dir: Path,
    out_dir: Path,
    splits: Sequence[str] = SPLITS,
    probe_labels: Sequence[str] = (),
    map_method: str = "auto",
    clip_len: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed ``splits`` of ``data_dir`` with every source and write the files listed above."""
    if not sources:
        raise UserError("nothing to embed", fix="pass a run dir and/or --init random|kinetics")
    if map_method not in MAP_METHODS:
        raise UserError(f"unknown map method '{map_method}'", fix=f"use {', '.join(MAP_METHODS)}")
    if map_method == "umap":  # the optional packages, before any work
        require_extra("umap", "embed --map umap", alternative="use --map pca")
    if cfg.runtime.tensorboard:
        from echoclr_cli.training import tb

        tb.require()
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise UserError(f"unknown split(s) {bad}", fix=f"use {', '.join(SPLITS)}")
    out_dir = Path(out_dir)
    data_dir = Path(data_dir)
    df = load_manifest(data_dir)
    labels = label_columns(df)
    for lab in probe_labels:
        if lab not in labels:
            raise UserError(
                f"--probe {lab}: no label column '{lab}' in {data_dir / 'manifest.csv'} "
                f"(labels: {', '.join(labels) or 'none'})",
                fix="pass one of the manifest's label columns",
            )
    if probe_labels and "train" not in splits:
        raise UserError("--probe fits on the train split", fix="include train in --split")
    df = df[df["split"].isin(splits)].reset_index(drop=True)
    if df.empty:
        raise UserError(
            f"{data_dir / 'manifest.csv'} has no videos in split(s) {list(splits)}",
            fix="pick --split among the manifest's splits",
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} is not empty", fix="pass --overwrite or another --out")
    encs = [load_encoder(cfg, s, clip_len) for s in sources]
    _source_names(encs)
    colourings = [*labels, "split", "site"]
    summaries, probes, used = [], [], {}
    index = df[["video_id", "study_id", "patient_id", "split"]].copy()
    index["site"] = site_column(df)
    for lab in labels:
        index[lab] = pd.to_numeric(df[lab], errors="coerce")
    box: dict[str, Any] = {}

    def fill(stage: Path) -> list[Path]:
        """Every file, written into the staging folder of ``io.replace_own_files``."""
        files: list[Path] = []
        for enc in encs:
            d = stage / enc.name
            d.mkdir(parents=True, exist_ok=True)
            if progress:
                progress(Status(f"embedding {len(df)} videos with {enc.name}"))
            x, ids = embed_videos(enc, cfg, df, data_dir, progress)
            if list(ids["video_id"]) != list(index["video_id"]):
                raise RuntimeError("embedding order differs from the manifest order")
            coords, used[enc.name] = map_2d(x, map_method, cfg.runtime.seed)
            vid = index.drop(columns=["patient_id"]).assign(map_x=coords[:, 0], map_y=coords[:, 1])
            vid.insert(0, "row", np.arange(len(vid)))
            study_x, study_idx = _studies(x, index, labels)
            files += _save(d / "embeddings_video.npy", x)
            files += _save(d / "embeddings_study.npy", study_x)
            atomic_write_csv(d / "index_video.csv", vid)
            atomic_write_csv(d / "index_study.csv", study_idx)
            title = f"{enc.name} ({enc.kind}, {enc.arch} x{enc.width}): {used[enc.name].upper()}"
            files += [d / "index_video.csv", d / "index_study.csv"]
            files.append(plot_map(coords, index, colourings, title, d / "map.png"))
            summary = summarize(x, index, colourings)
            facts = {
                "source": enc.kind if enc.kind in INITS else "run",
                "kind": enc.kind, "arch": enc.arch, "width": enc.width, "clip_len": enc.clip_len,
                "stride": enc.stride, "clips_per_video": cfg.evaluate.clips_per_video,
                "normalization": enc.normalization, "map": used[enc.name],
                "n_videos": len(vid), "n_studies": len(study_idx), "features": int(x.shape[1]),
            }  # fmt: skip
            probe_json = {}
            for lab in probe_labels:
                table, full = probe(x, index, lab, cfg)
                probes.append(table.assign(source=enc.name, label=lab))
                probe_json[lab] = full
            atomic_write_json(d / "summary.json", {**facts, "summary": summary})
            files.append(d / "summary.json")
            if probe_json:
                atomic_write_json(d / "probe.json", probe_json)
                files.append(d / "probe.json")
            for col, entry in summary.items():
                summaries.append({"source": enc.name, "colouring": col, **entry})
            if cfg.runtime.tensorboard:
                from echoclr_cli.training import tb

                files.append(tb.add_embedding(d / "tensorboard", x, vid, colourings, enc.name))
        summary_df = pd.DataFrame(summaries)
        atomic_write_csv(stage / "summary.csv", summary_df)
        files.append(stage / "summary.csv")
        probe_df = None
        if probes:
            probe_df = pd.concat(probes, ignore_index=True)[list(PROBE_COLUMNS)]
            atomic_write_csv(stage / "probe.csv", probe_df)
            files.append(stage / "probe.csv")
        box.update(summary=summary_df, probe=probe_df)
        return [f.relative_to(stage) for f in files]

    # only embed's own earlier files (.echoclr-files.json) are replaced, never anyone else's
    written, _ = replace_own_files(out_dir, "embed", fill, overwrite=overwrite)
    files = [out_dir / rel for rel in written]
    summary_df, probe_df = box["summary"], box["probe"]
    return EmbedResult(out_dir, encs, used, summary_df, probe_df, files)


def _studies(
    x: np.ndarray, index: pd.DataFrame, labels: list[str]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Mean video feature per study (sorted by study_id) and the study index frame."""
    codes, uniq = pd.factorize(index["study_id"], sort=True)
    sums = np.zeros((len(uniq), x.shape[1]), np.float64)
    np.add.at(sums, codes, x)
    counts = np.bincount(codes, minlength=len(uniq))[:, None]
    g = index.groupby("study_id", sort=True)
    study = g[["split", "site", *labels]].first().reset_index()
    study.insert(0, "row", np.arange(len(study)))
    return (sums / counts).astype(np.float32), study


def _save(path: Path, arr: np.ndarray) -> list[Path]:
    atomic_write(path, lambda f: np.save(f, arr))
    return [path]
