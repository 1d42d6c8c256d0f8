"""Preflight: find every data problem that can be found before a model is built.

`echoclr check --data DATA [--task T]` runs it on its own; pretrain, finetune and sweep run the
same function first, so nothing is allocated on a GPU before it passes. It is cheap: it reads
manifest.csv, checks files with ``os.path.exists`` only, and never opens a video (seconds for a
10,000-video manifest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from echoclr_cli.config import Config
from echoclr_cli.data.manifest import SPLITS, label_columns, load_manifest
from echoclr_cli.errors import UserError


@dataclass
class Finding:
    level: str  # "ok" | "warn" | "error"
    what: str
    detail: str
    fix: str = ""


@dataclass
class CheckResult:
    data_dir: Path
    task: str | None
    n_videos: int
    n_studies: int
    n_patients: int
    splits: pd.DataFrame  # split -> videos, studies, patients, positives, negatives (task)
    findings: list[Finding] = field(default_factory=list)
    manifest: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def raise_if_failed(self) -> None:
        errors = [f for f in self.findings if f.level == "error"]
        if errors:
            raise UserError(
                f"preflight failed for {self.data_dir}: "
                + "; ".join(f"{e.what}: {e.detail}" for e in errors),
                fix=errors[0].fix or "see `echoclr check --data DIR`",
            )


def _split_table(df: pd.DataFrame, task: str | None) -> pd.DataFrame:
    rows = []
    for split in SPLITS:
        part = df[df["split"] == split]
        row = {
            "split": split,
            "videos": len(part),
            "studies": part["study_id"].nunique(),
            "patients": part["patient_id"].nunique(),
        }
        if task:
            study_y = part.groupby("study_id")[task].max()
            row["positives"] = int((study_y == 1).sum())
            row["negatives"] = int((study_y == 0).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps per epoch with drop_last (what the training loaders use)."""
    return (n_samples // max(world_size, 1)) // batch_size


def run_check(
    cfg: Config,
    data_dir: Path,
    task: str | None = None,
    section: str | None = None,
    world_size: int = 1,
) -> CheckResult:
    """Validate a dataset dir for ``section`` (pretrain | finetune | None = data only).

    Hard problems raised by the manifest loader (missing files, leakage, unknown splits, bad
    columns) propagate as UserError immediately; the rest are collected as findings.
    """
    data_dir = Path(data_dir)
    df = load_manifest(data_dir, task=task)
    findings: list[Finding] = []
    labels = label_columns(df)
    splits = _split_table(df, task)
    res = CheckResult(
        data_dir=data_dir,
        task=task,
        n_videos=len(df),
        n_studies=df["study_id"].nunique(),
        n_patients=df["patient_id"].nunique(),
        splits=splits,
        findings=findings,
        manifest=df,
    )
    findings.append(Finding("ok", "manifest", f"{len(df)} videos, all files present, no leakage"))
    excluded = df.attrs.get("excluded", [])
    for e in excluded:
        if e["reason"] == "bad_label":
            findings.append(
                Finding("warn", "bad_label", f"{e['video_id']}: {e['detail']} (excluded)")
            )
    n_unknown = sum(e["reason"] == "unknown_label" for e in excluded)
    if task and n_unknown:
        findings.append(
            Finding(
                "ok",
                "unknown labels",
                f"{n_unknown} video(s) without a '{task}' label excluded (never reach a loss)",
            )
        )
    by = splits.set_index("split")
    if by.loc["train", "videos"] == 0:
        findings.append(Finding("error", "train split", "no training videos", "re-run preprocess"))

    if task:
        for split in ("train", "val", "test"):
            pos, neg = by.loc[split, "positives"], by.loc[split, "negatives"]
            if pos + neg == 0:
                level = "error" if split in ("train", "val") else "warn"
                findings.append(
                    Finding(
                        level,
                        f"{split} split",
                        f"no studies with a known '{task}' label",
                        "check the label column and the split fractions",
                    )
                )
            elif pos == 0 or neg == 0:
                cls = "positive" if pos == 0 else "negative"
                level = "error" if split == "train" else "warn"
                detail = f"one class only (no {cls} study)"
                if split != "train":
                    detail += "; AUROC/AUPR there will be reported as undefined"
                findings.append(
                    Finding(level, f"{split} split", detail, "re-split with more studies")
                )
            else:
                findings.append(
                    Finding("ok", f"{split} split", f"{pos} positive / {neg} negative studies")
                )
    elif labels:
        findings.append(Finding("ok", "labels", ", ".join(labels)))

    if section == "pretrain":
        from echoclr_cli.data.datasets import PairDataset

        splits_used = [s.strip() for s in cfg.pretrain.split.split(",")]
        part = df[df["split"].isin(splits_used)]
        if part.empty:
            findings.append(
                Finding(
                    "error",
                    "pretrain split",
                    f"no videos in pretrain.split '{cfg.pretrain.split}'",
                    "set pretrain.split to present split(s), e.g. --set pretrain.split=train",
                )
            )
        else:
            n = len(
                PairDataset(
                    part,
                    data_dir,
                    cfg.pretrain.method,
                    cfg.pretrain.clip_len,
                    cfg.pretrain.stride,
                    cfg.pretrain.reorder_frames,
                    cfg.runtime.seed,
                )
            )
            _pretrain_batches(findings, cfg.pretrain.method, n, cfg.pretrain.batch_size, world_size)
    elif section == "finetune" and task:
        n_train = by.loc["train", "positives"] + by.loc["train", "negatives"]
        n_sub = max(2, int(cfg.finetune.frac * n_train))
        vids = len(df[df["split"] == "train"]) * n_sub / max(n_train, 1)
        steps = steps_per_epoch(int(vids), cfg.finetune.batch_size, world_size)
        if steps == 0:
            findings.append(
                Finding(
                    "warn",
                    "finetune batches",
                    f"about {int(vids)} training videos at frac {cfg.finetune.frac} is less than "
                    f"batch size {cfg.finetune.batch_size}: the batch is capped at the subset size",
                )
            )
    return res


def _pretrain_batches(findings: list[Finding], method: str, n: int, batch: int, world: int) -> None:
    """The rule of ``pretrain.plan_pretrain``: fewer than 2 pairs per process is an error (no
    contrastive batch); a batch larger than the pairs per process is lowered to them (noted)."""
    per_rank = n // max(world, 1)
    if per_rank < 2:
        findings.append(
            Finding(
                "error",
                "pretrain batches",
                f"{method}: {n} training pair(s) for {world} process(es); a contrastive batch "
                "needs at least 2 pairs per process",
                "use more studies or fewer processes",
            )
        )
    elif batch > per_rank:
        findings.append(
            Finding(
                "warn",
                "pretrain batches",
                f"batch size {batch} > {per_rank} pairs per process: batches of {per_rank} "
                "(one step per epoch)",
            )
        )
    else:
        findings.append(
            Finding("ok", "pretrain batches", f"{n} pairs -> {per_rank // batch} steps/epoch")
        )
