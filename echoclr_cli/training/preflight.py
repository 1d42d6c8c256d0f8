"""The one preflight: find every data problem that can be found before a model is built.

`echoclr check --data DATA [--task T] [--for pretrain|finetune]` runs it on its own; pretrain,
finetune and sweep run the same function (``run_check``) first, so the standalone check cannot
disagree with a real run and nothing is allocated on a GPU before it passes. It is cheap: it reads
manifest.csv, checks files with ``os.path.exists`` only, and never opens a video (seconds for a
10,000-video manifest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from echoclr_cli.config.schema import Config
from echoclr_cli.data.fractions import sample_label_fraction, study_labels
from echoclr_cli.data.manifest import SPLITS, label_columns, load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.pretrain.plan import pair_dataset, pretrain_batch, select_splits


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
    df = load_manifest(data_dir, task=task, cfg=cfg)
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
        _pretrain_findings(findings, cfg, df, data_dir, world_size)
    elif section == "finetune" and task:
        _finetune_findings(findings, cfg, df, task, world_size)
    return res


def _pretrain_findings(
    findings: list[Finding], cfg: Config, df: pd.DataFrame, data_dir: Path, world: int
) -> None:
    """The rules of ``pretrain.plan.plan_pretrain`` (split selection, then the batch rule), as
    findings: an error where pretraining would refuse, a warning where it lowers the batch."""
    pc = cfg.pretrain
    try:
        part = select_splits(df, pc.split)
    except UserError as e:
        findings.append(Finding("error", "pretrain split", e.message, e.fix or ""))
        return
    n = len(pair_dataset(cfg, part, data_dir))
    try:
        _, steps, notes = pretrain_batch(n, pc.batch_size, world, pc.method)
    except UserError as e:
        findings.append(Finding("error", "pretrain batches", e.message, e.fix or ""))
        return
    for note in notes:
        findings.append(Finding("warn", "pretrain batches", note))
    if not notes:
        findings.append(Finding("ok", "pretrain batches", f"{n} pairs -> {steps} steps/epoch"))


def _finetune_findings(
    findings: list[Finding], cfg: Config, df: pd.DataFrame, task: str, world: int
) -> None:
    """The training subset of ``finetune.frac`` (the fine-tune's own sampling rule) against the
    batch size. Skipped when the training split lacks a class (already an error above)."""
    ft = cfg.finetune
    train = df[df["split"] == "train"]
    y = train.groupby("study_id")[task].max()
    if not ((y == 1).any() and (y == 0).any()):
        return
    try:
        sample = sample_label_fraction(study_labels(train, task), ft.frac, ft.frac_seed, task)
    except UserError as e:
        findings.append(Finding("error", "finetune subset", e.message, e.fix or ""))
        return
    vids = int(train["study_id"].isin(set(sample.studies["study_id"])).sum())
    if steps_per_epoch(vids, ft.batch_size, world) == 0:
        findings.append(
            Finding(
                "warn",
                "finetune batches",
                f"{vids} training videos at frac {ft.frac} is less than batch size "
                f"{ft.batch_size}: the batch is capped at the subset size",
            )
        )
