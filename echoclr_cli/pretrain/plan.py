"""What a pretraining run will do, decided before any model is built: the rows of
``pretrain.split``, their pairs, the batch per process, the steps per epoch and the BatchNorm
groups.

The preflight (``echoclr check --for pretrain``, ``training/preflight.py``) and ``run_pretrain``
apply the same rules from here, so the standalone check cannot disagree with a real run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from echoclr_cli.config.schema import Config
from echoclr_cli.data.datasets import EpochSampler, PairDataset
from echoclr_cli.errors import UserError
from echoclr_cli.models.sync_bn import group_bounds


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


def bn_group_size(cfg: Config, world_size: int = 1) -> int:
    """The BatchNorm group of pretraining in clips (0 = none): ``pretrain.bn_group_size``,
    except that ``runtime.sync_bn`` on several processes normalises over the global batch."""
    return 0 if cfg.runtime.sync_bn and world_size > 1 else cfg.pretrain.bn_group_size


def bn_groups(cfg: Config, batch: int, world_size: int = 1) -> list[str]:
    """The BatchNorm-group rule of pretraining (``pretrain.bn_group_size`` G, the
    ``GroupBatchNorm`` of ``models/sync_bn.py``): each view's ``batch * world_size`` clips are
    normalised in groups of G along the global batch, whatever the number of processes. Returns
    a note when the view is cut into several groups, or would be but ``runtime.sync_bn``
    overrides G."""
    g, view = cfg.pretrain.bn_group_size, batch * world_size
    groups = group_bounds(view, g)
    if len(groups) == 1:  # one group: the whole view, as sync_bn and a single process do
        return []
    if not bn_group_size(cfg, world_size):
        return [
            f"runtime.sync_bn: BatchNorm over the global batch ({view} clips per view); "
            f"pretrain.bn_group_size {g} not applied"
        ]
    sizes = sorted({e - s for s, e in groups}, reverse=True)
    return [
        f"BatchNorm in groups of {g} clips per view (pretrain.bn_group_size, the published "
        f"2-GPU replicas): {len(groups)} group(s) of {'/'.join(map(str, sizes))} clips in the "
        f"{view}-clip view on {world_size} process(es)"
    ]


def plan_pretrain(cfg: Config, df: pd.DataFrame, data_dir: Path, world_size: int = 1) -> Plan:
    """The pairs of ``pretrain.split``, the batch of :func:`pretrain_batch` and the BatchNorm
    groups of :func:`bn_groups`."""
    pc = cfg.pretrain
    ds = pair_dataset(cfg, select_splits(df, pc.split), data_dir)
    what = f"{pc.method} on split '{pc.split}'"
    batch, steps, notes = pretrain_batch(len(ds), pc.batch_size, world_size, what)
    notes += bn_groups(cfg, batch, world_size)
    return Plan(ds, batch, steps, world_size, notes)


def make_loader(
    cfg: Config, plan: Plan, rank: int, pin_memory: bool
) -> tuple[DataLoader, EpochSampler]:
    """The plan's pairs as full batches of ``plan.batch_size``, this process's share."""
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
