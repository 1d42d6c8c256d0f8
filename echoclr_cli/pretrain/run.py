"""Self-supervised pretraining (SimCLR, MI-SimCLR, EchoCLR) as a task on the training engine.

``run_pretrain`` reads the dataset dir, checks that training can run (preflight, before any
model is built or any file written), builds pairs / sampler / loader / model / optimizer and
hands them to ``Engine.fit``. Per step (``PretrainTask.train_step``): both views go to the device
as uint8, are augmented with the engine's generator, min-max scaled and run through the model
(one backbone call per view by default, as the paper: ``pretrain.view_forward``); the loss is

    nt_xent_weight * NT-Xent(z1, z2)                                    (all methods)
  + reorder_weight * CE(order logits of both views, permutation targets)  (echoclr only)

where the cross-entropy is one mean over the 2B clips of both views (= the mean of the two
views' losses), as in the published scripts; with the default weights 1, 1 this is the
paper's unweighted "NT-Xent + cross-entropy". ``pretrain.batch_size`` is the global batch: each
of k processes takes batch/k pairs and the NT-Xent gathers the embeddings of all processes, so
k processes optimise the loss of the global batch. The losses run in float32 (autocast off).

The checkpoint's model state is the ``SSLModel``: ``backbone.*`` (what fine-tuning loads),
``projector.*`` and, for EchoCLR, ``reorder_head.*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config, with_pretrain_epochs
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import ClipDataset, EpochSampler, PairDataset
from echoclr_cli.errors import UserError
from echoclr_cli.events import Note
from echoclr_cli.io import atomic_write_json
from echoclr_cli.models.backbones import SSLModel, build_backbone, n_permutations
from echoclr_cli.pretrain.losses import nt_xent, order_accuracy, order_loss
from echoclr_cli.rundir import manifest_fingerprint
from echoclr_cli.training.optim import build_optimizer, build_scheduler

PROBE_BATCH = 32
PROBE_KNN = 20


@dataclass
class PretrainResult:
    run_dir: Path
    method: str
    epochs_run: int
    steps: int
    n_videos: int
    n_studies: int
    n_pairs: int
    batch_size: int  # pairs per process per step (may be lowered, see notes)
    steps_per_epoch: int
    checkpoint: Path
    history: pd.DataFrame
    global_batch: int = 0  # pairs per step over all processes
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- probe
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


# --------------------------------------------------------------------------- task
class PretrainTask:
    """Engine task: a batch of pairs -> contrastive (+ frame-order) loss.

    ``model`` is the plain ``SSLModel`` (checkpointed); ``net`` the prepared one (DDP /
    compiled) used for the forward pass.
    """

    def __init__(
        self,
        cfg: Config,
        model: SSLModel,
        net: nn.Module | None = None,
        probe: ProbeData | None = None,
    ):
        self.cfg = cfg
        self.pc = cfg.pretrain
        self.model = model
        self.net = net if net is not None else model
        self.probe = probe
        self.reorder = self.pc.method == "echoclr"

    def train_step(self, batch: dict[str, Any], engine: Any) -> dict[str, torch.Tensor]:
        """uint8 views (B, C, T, H, W) -> {loss, nt_xent, [reorder_loss, reorder_acc], n_clips}.

        Uses ``engine.device``, ``engine.generator`` (augmentation) and ``engine.distributed``
        (gather the embeddings of all ranks); the engine runs this inside its autocast.
        """
        dev = engine.device
        v1 = batch["view1"].to(dev, non_blocking=True)  # (B, C, T, H, W) uint8
        v2 = batch["view2"].to(dev, non_blocking=True)  # (B, C, T, H, W) uint8
        b = v1.shape[0]
        x = prepare_clips(
            torch.cat([v1, v2]), self.pc.augment, engine.generator
        )  # (2B, 3, T, H, W)
        if dev.type == "cuda" and self.cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        # separate (paper): one backbone call per view inside one model call, so BatchNorm
        # normalises each view with its own statistics; joint: one 2B call.
        views = 2 if self.pc.view_forward == "separate" else 1
        _, z, logits = self.net(x, views=views)  # z (2B, D), logits (2B, K!) or None
        z1, z2 = z.float()[:b], z.float()[b:]  # (B, D) each
        groups = (
            batch["study_index"].to(dev, non_blocking=True)
            if self.pc.exclude_same_study_negatives
            else None
        )
        gather = bool(getattr(engine, "distributed", False))
        nt = nt_xent(z1, z2, self.pc.temperature, gather=gather, groups=groups)
        loss = self.pc.nt_xent_weight * nt
        out = {"nt_xent": nt.detach()}
        if self.reorder:
            target = torch.cat([batch["perm1"], batch["perm2"]]).to(dev, non_blocking=True)  # (2B,)
            ro = order_loss(logits, target)
            loss = loss + self.pc.reorder_weight * ro
            out["reorder_loss"] = ro.detach()
            out["reorder_acc"] = order_accuracy(logits.detach(), target)
        out["loss"] = loss
        out["n_clips"] = torch.tensor(2 * b)
        return out

    def end_of_epoch(self, epoch: int, engine: Any) -> dict[str, float]:
        every = self.pc.probe_every
        if self.probe is None or not every or (epoch + 1) % every:
            return {}
        return run_probe(self.model.backbone, self.probe, engine)


# --------------------------------------------------------------------------- preflight + run
@dataclass
class Plan:
    """What preflight decided: the pairs, the batch per process, steps per epoch, notes."""

    dataset: PairDataset
    batch_size: int
    steps_per_epoch: int
    world_size: int
    notes: list[str]


def select_splits(df: pd.DataFrame, splits: str) -> pd.DataFrame:
    """Rows of the comma-separated ``pretrain.split`` values."""
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    sel = df[df["split"].isin(wanted)].reset_index(drop=True)
    if sel.empty:
        have = sorted(df["split"].unique())
        raise UserError(
            f"no videos in split(s) {wanted} of the manifest (splits present: {have})",
            fix="set pretrain.split to present split(s), e.g. --set pretrain.split=train",
        )
    return sel


def pair_dataset(cfg: Config, df: pd.DataFrame, data_dir: Path) -> PairDataset:
    """The training pairs of ``cfg.pretrain`` over the rows ``df`` (already split-selected)."""
    pc = cfg.pretrain
    return PairDataset(
        df, data_dir, pc.method, pc.clip_len, pc.stride, pc.reorder_frames, cfg.runtime.seed,
        pair_within=pc.pair_within,
    )  # fmt: skip


def pretrain_batch(
    n_pairs: int, batch_size: int, world_size: int = 1, what: str = "pretraining"
) -> tuple[int, int, list[str]]:
    """The pretraining batch rule: ``(batch per process, steps per epoch, notes)``.

    ``batch_size`` is the GLOBAL batch (pairs per step over all processes, paper 392); each of
    the ``world_size`` processes takes ``batch_size / world_size`` pairs and the NT-Xent spans
    the whole global batch through the gather, so the loss does not depend on the number of
    processes. A global batch that does not divide by the number of processes is refused.
    Every step uses full batches (drop_last, as the paper): a last partial batch would change
    the number of negatives. When a process has fewer pairs than its share, its batch is
    lowered to the pairs it has (noted). Fewer than 2 pairs per process: UserError.
    """
    world = max(world_size, 1)
    if batch_size % world:
        lower, upper = (batch_size // world) * world, -(-batch_size // world) * world
        raise UserError(
            f"pretrain.batch_size {batch_size} is the global batch and does not divide by the "
            f"{world} processes",
            fix=f"set --batch-size to a multiple of {world} (e.g. {max(lower, world)} or {upper})",
        )
    per_rank = n_pairs // world
    if per_rank < 2:
        raise UserError(
            f"{what} has {n_pairs} training pair(s) for {world} process(es); a contrastive "
            "batch needs at least 2 pairs per process",
            fix="use more studies (or more processes' worth of data), or fewer processes",
        )
    notes: list[str] = []
    batch = batch_size // world
    if batch > per_rank:
        notes.append(
            f"pretrain.batch_size {batch_size} (global, {batch} per process) > {per_rank} pairs "
            f"per process: using batches of {per_rank} pairs per process (one step per epoch)"
        )
        batch = per_rank
    return batch, per_rank // batch, notes


def plan_pretrain(cfg: Config, df: pd.DataFrame, data_dir: Path, world_size: int = 1) -> Plan:
    """Preflight: the pairs of ``pretrain.split`` and the batch of :func:`pretrain_batch`."""
    pc = cfg.pretrain
    ds = pair_dataset(cfg, select_splits(df, pc.split), data_dir)
    what = f"{pc.method} on split '{pc.split}'"
    batch, steps, notes = pretrain_batch(len(ds), pc.batch_size, world_size, what)
    return Plan(ds, batch, steps, world_size, notes)


def build_probe(cfg: Config, df: pd.DataFrame, data_dir: Path) -> ProbeData | None:
    """The label probe's data, or None when ``pretrain.probe_every`` is 0."""
    pc = cfg.pretrain
    if not pc.probe_every:
        return None
    from echoclr_cli.data.manifest import label_columns

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


def build_model(cfg: Config) -> SSLModel:
    """SSLModel for ``cfg.model`` and ``cfg.pretrain.method``."""
    k = n_permutations(cfg.pretrain.reorder_frames) if cfg.pretrain.method == "echoclr" else 0
    return SSLModel(
        build_backbone(cfg.model.arch, cfg.model.width),
        cfg.model.proj_hidden,
        cfg.model.proj_dim,
        k,
    )


def make_loader(
    cfg: Config, plan: Plan, rank: int, pin_memory: bool
) -> tuple[DataLoader, EpochSampler]:
    workers = cfg.runtime.workers
    sampler = EpochSampler(
        len(plan.dataset),
        shuffle=True,
        seed=cfg.runtime.seed,
        rank=rank,
        world_size=plan.world_size,
        drop_last=True,
        batch_size=plan.batch_size,
    )
    loader = DataLoader(
        plan.dataset,
        batch_size=plan.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, sampler


def run_pretrain(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> PretrainResult:
    """Pretrain ``cfg.pretrain.method`` on ``data_dir`` into the run dir ``out_dir``."""
    from echoclr_cli.check import run_check
    from echoclr_cli.runtime import dist_env
    from echoclr_cli.training.engine import Engine

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    cfg = with_pretrain_epochs(cfg)  # None -> the method's published count, recorded
    rank, world, _ = dist_env()
    # Preflight (the same as `echoclr check --for pretrain`): missing files, leakage, splits,
    # batches; nothing is built, allocated or written before it passes.
    check = run_check(cfg, data_dir, section="pretrain", world_size=world)
    check.raise_if_failed()
    df = check.manifest
    plan = plan_pretrain(cfg, df, data_dir, world)
    probe = build_probe(cfg, df, data_dir)
    engine = Engine(
        cfg,
        out_dir,
        section="pretrain",
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        data_fingerprint=manifest_fingerprint(data_dir),
        force=force,
    )
    if progress is not None and rank == 0:
        for note in plan.notes:
            progress(Note(note))
    try:
        model = build_model(cfg)
        net = engine.prepare(model)
        optimizer = build_optimizer(model.parameters(), cfg.pretrain.optim)
        scheduler = build_scheduler(optimizer, cfg.pretrain.optim, cfg.pretrain.epochs)
        loader, sampler = make_loader(cfg, plan, rank, pin_memory=engine.device.type == "cuda")
        task = PretrainTask(cfg, model, net, probe)
        fit = engine.fit(
            task,
            loader,
            optimizer,
            scheduler,
            epochs=cfg.pretrain.epochs,
            sampler=sampler,
            checkpoint_every=cfg.pretrain.checkpoint_every,
            nonfinite_tolerance=cfg.pretrain.nonfinite_tolerance,
            max_steps_per_epoch=cfg.pretrain.max_steps_per_epoch,
        )
    finally:
        engine.close()
    table = plan.dataset.table
    steps = plan.steps_per_epoch
    if cfg.pretrain.max_steps_per_epoch:
        steps = min(steps, cfg.pretrain.max_steps_per_epoch)
    result = PretrainResult(
        run_dir=out_dir,
        method=cfg.pretrain.method,
        epochs_run=fit.epochs_run,
        steps=fit.steps,
        n_videos=len(table.video_id),
        n_studies=len(set(table.study_id)),
        n_pairs=len(plan.dataset),
        batch_size=plan.batch_size,
        global_batch=plan.batch_size * plan.world_size,
        steps_per_epoch=steps,
        checkpoint=rundir.last_checkpoint(out_dir),
        history=fit.history,
        notes=plan.notes,
    )
    if rank == 0:
        last = fit.history.iloc[-1].to_dict() if len(fit.history) else {}
        atomic_write_json(
            out_dir / "metrics.json",
            {
                "method": result.method,
                "epochs": result.epochs_run,
                "steps": result.steps,
                "videos": result.n_videos,
                "studies": result.n_studies,
                "pairs": result.n_pairs,
                "batch_size": result.batch_size,
                "global_batch": result.global_batch,
                "steps_per_epoch": result.steps_per_epoch,
                "notes": result.notes,
                "final": {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in last.items()
                },
            },
        )
    return result
