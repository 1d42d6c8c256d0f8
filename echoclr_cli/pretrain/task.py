"""The pretraining task: a batch of pairs -> the method's loss (``Engine.fit`` runs it).

Per step (``PretrainTask.train_step``): both views go to the device as uint8, are augmented with
the engine's generator, min-max scaled and run through the model (one backbone call per view by
default, as the paper: ``pretrain.view_forward``); the loss is the sum of the method's loss terms
(``pretrain/methods.py``):

    nt_xent_weight * NT-Xent(z1, z2)                                    (all methods)
  + reorder_weight * CE(order logits of both views, permutation targets)  (reorder: EchoCLR)

where the cross-entropy is one mean over the 2B clips of both views (= the mean of the two
views' losses), as in the published scripts; with the default weights 1, 1 this is the
paper's unweighted "NT-Xent + cross-entropy". ``pretrain.batch_size`` is the global batch: each
of k processes takes batch/k pairs and the NT-Xent gathers the embeddings of all processes, so
k processes optimise the loss of the global batch. The losses run in float32 (autocast off).

Each loss is reported beside its chance value (history.csv and the epoch line):
``nt_xent_chance`` = ln(2N - 1), N the pairs of the global batch (the loss of embeddings that
carry nothing; with ``exclude_same_study_negatives`` the mean log-count of each anchor's
candidates), ``reorder_chance`` = ln K! and ``reorder_acc_chance`` = 1/K! (K = 4: ln 24, 1/24).

The model is the ``SSLModel``: ``backbone.*`` (what fine-tuning loads), ``projector.*`` and, for
a reorder method, ``reorder_head.*`` (``pretrain.reorder_head``: ``linear`` on the pooled
features as published, or ``frames`` on the differences between the frames' own layer1 maps,
models/backbones.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.models.backbones import SSLModel, build_backbone, n_permutations
from echoclr_cli.pretrain.losses import (
    nt_xent,
    nt_xent_chance,
    order_accuracy,
    order_chance,
    order_loss,
)
from echoclr_cli.pretrain.methods import METHODS
from echoclr_cli.pretrain.probe import ProbeData, run_probe


def build_model(cfg: Config) -> SSLModel:
    """SSLModel for ``cfg.model`` and ``cfg.pretrain.method`` (a reorder head when it reorders)."""
    reorder = METHODS[cfg.pretrain.method].reorder
    k = n_permutations(cfg.pretrain.reorder_frames) if reorder else 0
    return SSLModel(
        build_backbone(cfg.model.arch, cfg.model.width),
        cfg.model.proj_hidden,
        cfg.model.proj_dim,
        k,
        reorder_head=cfg.pretrain.reorder_head,
        reorder_frames=cfg.pretrain.reorder_frames,
    )


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
        self.loss_terms = METHODS[self.pc.method].loss_terms  # nt_xent [, reorder]

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
        out = {"nt_xent": nt.detach(), "nt_xent_chance": self._nt_xent_chance(b, gather, groups)}
        if "reorder" in self.loss_terms:
            target = torch.cat([batch["perm1"], batch["perm2"]]).to(dev, non_blocking=True)  # (2B,)
            ro = order_loss(logits, target)
            loss = loss + self.pc.reorder_weight * ro
            loss_chance, acc_chance = order_chance(logits.shape[1])
            out["reorder_loss"] = ro.detach()
            out["reorder_chance"] = loss_chance
            out["reorder_acc"] = order_accuracy(logits.detach(), target)
            out["reorder_acc_chance"] = acc_chance
        out["loss"] = loss
        out["n_clips"] = torch.tensor(2 * b)
        return out

    def _nt_xent_chance(self, b: int, gather: bool, groups: torch.Tensor | None) -> Any:
        """The NT-Xent at chance for this batch (``losses.nt_xent_chance``): a float
        ln(2N - 1) without groups (no device work), else a device scalar."""
        if groups is None:
            n = b * (dist.get_world_size() if gather and dist.is_initialized() else 1)
            return math.log(2 * n - 1)
        return nt_xent_chance(b, gather, groups)

    def end_of_epoch(self, epoch: int, engine: Any) -> dict[str, float]:
        every = self.pc.probe_every
        if self.probe is None or not every or (epoch + 1) % every:
            return {}
        return run_probe(self.model.backbone, self.probe, engine)
