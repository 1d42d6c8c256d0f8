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

The model is the ``SSLModel``: ``backbone.*`` (what fine-tuning loads), ``projector.*`` and, for
a reorder method, ``reorder_head.*``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.models.backbones import SSLModel, build_backbone, n_permutations
from echoclr_cli.pretrain.losses import nt_xent, order_accuracy, order_loss
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
        out = {"nt_xent": nt.detach()}
        if "reorder" in self.loss_terms:
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
