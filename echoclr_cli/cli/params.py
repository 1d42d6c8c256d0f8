"""Every command's own options, declared once: one frozen dataclass per command, its fields the
Typer options and arguments in ``--help`` order, and ``flags()``, the config keys they set.

A command decorated with ``@command_options(XOptions)`` (cli_options.py) takes one keyword-only
``opts: XOptions``; Typer sees the fields as the command's options at that place. The options
every command shares (``--data``, ``--overwrite``, ``--workers``, the sweep grid, ...) are the
types of cli_options.py; the common tail (``--config`` ... ``-q``) and the training block are
``Common`` and ``Training`` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from echoclr_cli.cli.common import (
    AtSensOpt,
    AtThrOpt,
    CalibrateOpt,
    CheckFor,
    DataOpt,
    DryRunOpt,
    InitsOpt,
    JobsOpt,
    LauncherOpt,
    LowRatioLrsOpt,
    LowRatioSeedsOpt,
    LrsOpt,
    OverwriteOpt,
    PretrainDirOpt,
    PretrainMissingOpt,
    RatiosOpt,
    SeedsOpt,
    ShardOpt,
    SlurmArrayParallelismOpt,
    SlurmGpusOpt,
    SlurmPartitionOpt,
    SlurmTimeOpt,
    TasksOpt,
    VerboseOpt,
    WorkersOpt,
    csv_list,
    path_str,
)

PrintRecipeOpt = Annotated[
    bool,
    typer.Option(
        "--print-recipe",
        help="Print the resolved recipe against the published one (each difference named, "
        "with why) and exit without training.",
    ),
]


class Options:
    """Base of the option classes: ``flags()`` = the config keys the options set (None = not
    given); none for a command whose options are not config keys."""

    def flags(self) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- synth
@dataclass(frozen=True)
class SynthOptions(Options):
    """``echoclr synth OUT``: the archive's size, seed, format and views."""

    out_dir: Annotated[
        Path | None, typer.Argument(help="Output directory for the synthetic archive.")
    ] = None
    studies: Annotated[
        int | None, typer.Option("--studies", help="Number of studies (synth.studies).")
    ] = None
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (synth.seed).")] = None
    fmt: Annotated[
        str | None, typer.Option("--format", help="dicom | avi | mp4 (synth.format).")
    ] = None
    preview: Annotated[
        Path | None, typer.Option("--preview", help="Also write a PNG montage of frames here.")
    ] = None
    views: Annotated[
        str | None,
        typer.Option(
            "--views",
            help="Comma-separated views per study: plax,psax,a4c,a2c (synth.views; default plax).",
        ),
    ] = None

    def flags(self) -> dict[str, Any]:
        return {"synth.studies": self.studies, "synth.seed": self.seed, "synth.format": self.fmt,
                "synth.views": self.views}  # fmt: skip


# --------------------------------------------------------------------------- preprocess
@dataclass(frozen=True)
class PreprocessOptions(Options):
    """``echoclr preprocess``: input, layout, labels, workers, frame size, view filter."""

    input_dir: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="Raw archive: DICOM/video tree, EchoCLR or EchoNet layout, "
            "or synth output. Default: the embedded synthetic archive (paths.raw).",
        ),
    ] = None
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Dataset dir to write (paths.data).")
    ] = None
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Label CSV keyed by Accession Number, MRN/PatientID, StudyInstanceUID or Study "
            "Date + MRN (found from the column names; preprocess.label_key chooses).",
        ),
    ] = None
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="auto | dicom | video | echoclr | echonet | synth | mimic-echo | echonet-lvh.",
        ),
    ] = None
    label_rule: Annotated[
        list[str] | None,
        typer.Option(
            "--label-rule",
            help="Label rule NAME=EXPRESSION over the label table (repeatable), e.g. "
            "'as=av_vmax >= 4 or av_mean_gradient >= 40 or ava <= 1.0'.",
        ),
    ] = None
    label_preset: Annotated[
        list[str] | None,
        typer.Option(
            "--label-preset",
            help="Guideline label with your column names (repeatable): "
            "'as:vmax=COL,mean_gradient=COL,ava=COL' or 'lvh:lvmi=COL,sex=COL'.",
        ),
    ] = None
    labels_long: Annotated[
        str | None,
        typer.Option(
            "--labels-long",
            help="Label table with one row per measurement: auto | yes | no | NAME_COL,VALUE_COL.",
        ),
    ] = None
    workers: Annotated[
        str | None,
        typer.Option("--workers", help="Worker processes: N, or auto (all cores but one)."),
    ] = None
    size: Annotated[int | None, typer.Option("--size", help="Output frame size in pixels.")] = None
    external_after: Annotated[
        int | None, typer.Option("--external-after", help="Studies after this year -> ext_test.")
    ] = None
    salt: Annotated[
        str | None,
        typer.Option("--salt", help="Salt for de-identifying hashes (default: a random secret)."),
    ] = None
    allow_label_issues: Annotated[
        bool,
        typer.Option(
            "--allow-label-issues",
            help="Accept label values that map to neither class (e.g. NA), duplicated or "
            "unmatched ids, a label file that matches no video.",
        ),
    ] = False
    migrate: Annotated[
        Path | None,
        typer.Option("--migrate", help="Convert a dataset dir of the previous format, then exit."),
    ] = None
    view_model: Annotated[
        Path | None,
        typer.Option(
            "--view-model",
            help="View classifier run on every video: a `finetune --task view` run dir, or a "
            "TorchScript/ONNX file with its .json class list beside it. Needs --keep-view.",
        ),
    ] = None
    keep_view: Annotated[
        str | None, typer.Option("--keep-view", help="View class to keep, e.g. plax.")
    ] = None
    view_min: Annotated[
        float | None,
        typer.Option("--view-min", help="Also require the kept view's probability >= this."),
    ] = None
    overwrite: OverwriteOpt = False

    def flags(self) -> dict[str, Any]:
        return {
            "preprocess.input": path_str(self.input_dir),
            "preprocess.labels": path_str(self.labels),
            "preprocess.layout": self.layout,
            "preprocess.label_rules": list(self.label_rule) if self.label_rule else None,
            "preprocess.label_presets": list(self.label_preset) if self.label_preset else None,
            "preprocess.labels_long": self.labels_long,
            "preprocess.workers": self.workers,
            "preprocess.size": self.size,
            "preprocess.external_after": self.external_after,
            "preprocess.salt": self.salt,
            "preprocess.allow_label_issues": True if self.allow_label_issues else None,
            "preprocess.overwrite": True if self.overwrite else None,
            "preprocess.view_model": path_str(self.view_model),
            "preprocess.keep_view": self.keep_view,
            "preprocess.keep_view_min": self.view_min,
            "paths.data": path_str(self.output),
        }


# --------------------------------------------------------------------------- pretrain
@dataclass(frozen=True)
class PretrainOptions(Options):
    """``echoclr pretrain`` (with the training block and ``--print-recipe``)."""

    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="simclr | mi-simclr | echoclr (pretrain.method)."),
    ] = None
    data: DataOpt = None
    out: Annotated[
        Path | None, typer.Option("--out", help="Run dir. Default: <paths.runs>/pretrain/<method>.")
    ] = None

    def flags(self) -> dict[str, Any]:
        return {"pretrain.method": self.method, "paths.data": path_str(self.data)}


# --------------------------------------------------------------------------- finetune
@dataclass(frozen=True)
class FinetuneOptions(Options):
    """``echoclr finetune`` (with the training block and ``--print-recipe``)."""

    data: DataOpt = None
    task: Annotated[
        str | None,
        typer.Option(
            "--task", "-t", help="Binary label column: as, lvh or any other (finetune.task)."
        ),
    ] = None
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="random | kinetics | an SSL run dir | a checkpoint file "
            "(ours, published EchoCLR, torchvision) (finetune.init).",
        ),
    ] = None
    frac: Annotated[
        float | None,
        typer.Option("--frac", help="Fraction of labeled training studies, 0-1 (finetune.frac)."),
    ] = None
    frac_seed: Annotated[
        int | None,
        typer.Option("--frac-seed", help="Seed of the nested study subsets (finetune.frac_seed)."),
    ] = None
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Kinetics-400 weight file for --init kinetics (finetune.weights)."
        ),
    ] = None
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="full | linear (frozen backbone) | lp-ft (finetune.mode)."),
    ] = None
    monitor: Annotated[
        str | None,
        typer.Option("--monitor", help="Early stopping / best checkpoint: val_loss | val_auroc."),
    ] = None
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run dir. Default: <paths.runs>/finetune/<task>-<init>-<frac>-s<seed>."
        ),
    ] = None

    def flags(self) -> dict[str, Any]:
        return {
            "paths.data": path_str(self.data),
            "finetune.task": self.task,
            "finetune.init": self.init,
            "finetune.frac": self.frac,
            "finetune.frac_seed": self.frac_seed,
            "finetune.weights": path_str(self.weights),
            "finetune.mode": self.mode,
            "finetune.monitor": self.monitor,
        }


# --------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateOptions(Options):
    """``echoclr evaluate RUN``."""

    run: Annotated[Path, typer.Argument(help="Fine-tune run dir (uses checkpoints/best.pt).")]
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset dir (default: the one the run was trained on)."),
    ] = None
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            "--splits",
            help="Comma-separated splits, e.g. test,ext_test (default: evaluate.splits; val is "
            "always evaluated, its thresholds apply to the others).",
        ),
    ] = None
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare", help="Another run dir: paired bootstrap + DeLong of the AUROC difference."
        ),
    ] = None
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the evaluation folder here instead of RUN/eval/<name>/."),
    ] = None
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Folder name under RUN/eval/ (default: the splits, + the dataset when --data "
            "is not the run's, + vs-<run> with --compare).",
        ),
    ] = None
    clips: Annotated[
        str | None,
        typer.Option(
            "--clips", help="Clips per video: a number or 'all' (evaluate.clips_per_video)."
        ),
    ] = None
    bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help="Bootstrap resamples for CIs (evaluate.bootstrap)."),
    ] = None
    at_sensitivity: AtSensOpt = None
    at_threshold: AtThrOpt = None
    calibrate: CalibrateOpt = None
    workers: WorkersOpt = None

    def flags(self) -> dict[str, Any]:
        return {
            "evaluate.clips_per_video": self.clips,  # "all" or a number (the config parses it)
            "evaluate.bootstrap": self.bootstrap,
            "evaluate.at_sensitivity": self.at_sensitivity,
            "evaluate.at_threshold": self.at_threshold,
            "evaluate.calibrate": self.calibrate,
            "runtime.workers": self.workers,
        }


# --------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class PredictOptions(Options):
    """``echoclr predict RUN --input ...``."""

    run: Annotated[Path, typer.Argument(help="Fine-tune run dir.")]
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="A dataset dir (manifest.csv) or raw DICOM/video files."
        ),
    ]
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Video-level CSV; the study-level CSV gets a _study suffix, the private ids "
            "(AccessionNumber, PatientID, original file; mode 0600) a .private suffix.",
        ),
    ] = Path("predictions.csv")
    threshold: Annotated[
        str | None,
        typer.Option(
            "--threshold",
            help="Adds y_pred (0/1): 'val' = the run's operating point chosen on validation "
            "(Youden; the default when the run has one), or a probability, e.g. 0.5.",
        ),
    ] = None
    keep_data: Annotated[
        Path | None,
        typer.Option(
            "--keep-data",
            help="Raw input: preprocess it into this folder and keep it (default: a temporary "
            "folder, removed afterwards).",
        ),
    ] = None
    overwrite: OverwriteOpt = False
    workers: WorkersOpt = None

    def flags(self) -> dict[str, Any]:
        return {"runtime.workers": self.workers}


# --------------------------------------------------------------------------- embed
@dataclass(frozen=True)
class EmbedOptions(Options):
    """``echoclr embed [RUNS]...``."""

    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Pretrain or fine-tune run dirs (best.pt, else last.pt)."),
    ] = None
    data: DataOpt = None
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output dir (one subdir per source).")
    ] = Path("embeddings")
    init: Annotated[
        list[str] | None,
        typer.Option("--init", help="Also embed with an init: random | kinetics (repeatable)."),
    ] = None
    split: Annotated[
        str, typer.Option("--split", "--splits", help="Comma-separated splits to embed.")
    ] = "train,val,test,ext_test"
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe", help="Label: logistic regression on train, AUROC + CI on the rest."
        ),
    ] = None
    map_: Annotated[
        str, typer.Option("--map", help="2-D map: auto (UMAP if installed) | umap | pca.")
    ] = "auto"
    clip_len: Annotated[
        int | None, typer.Option("--clip-len", help="Frames per clip (default: the run's own).")
    ] = None
    overwrite: OverwriteOpt = False

    def flags(self) -> dict[str, Any]:
        return {"paths.data": path_str(self.data)}


# --------------------------------------------------------------------------- explain
@dataclass(frozen=True)
class ExplainOptions(Options):
    """``echoclr explain RUN``."""

    run: Annotated[Path, typer.Argument(help="Fine-tune run dir.")]
    data: DataOpt = None
    video: Annotated[
        list[str] | None, typer.Option("--video", help="video_id to explain (repeatable).")
    ] = None
    split: Annotated[str, typer.Option("--split", help="Split the videos come from.")] = "test"
    top: Annotated[
        int, typer.Option("--top", help="The K most confident TP/FP/TN/FN videos of the split.")
    ] = 0
    method: Annotated[
        str, typer.Option("--method", help="gradcam | ig (integrated gradients).")
    ] = "gradcam"
    layer: Annotated[str, typer.Option("--layer", help="Grad-CAM layer: layer1..layer4.")] = (
        "layer4"
    )
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dir.")] = Path("explain")
    overwrite: OverwriteOpt = False

    def flags(self) -> dict[str, Any]:
        return {"paths.data": path_str(self.data)}


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportOptions(Options):
    """``echoclr export RUN``."""

    run: Annotated[Path, typer.Argument(help="Fine-tune run dir (or any run with --encoder).")]
    format_: Annotated[str, typer.Option("--format", help="torchscript | onnx.")] = "onnx"
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Model file (default: RUN/model.<pt|onnx>).")
    ] = None
    encoder: Annotated[
        bool,
        typer.Option("--encoder", help="Export the backbone (features) instead of the classifier."),
    ] = False
    frame_size: Annotated[
        int | None,
        typer.Option("--frame-size", help="Frame size in pixels (default: the run's)."),
    ] = None
    overwrite: OverwriteOpt = False


# --------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class SweepOptions(Options):
    """``echoclr sweep``: the grid (comma-separated lists), launcher and SLURM settings."""

    data: DataOpt = None
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep dir. Default: <paths.runs>/sweep.")
    ] = None
    ratios: RatiosOpt = None
    inits: InitsOpt = None
    tasks: TasksOpt = None
    lrs: LrsOpt = None
    low_ratio_lrs: LowRatioLrsOpt = None
    seeds: SeedsOpt = None
    low_ratio_seeds: LowRatioSeedsOpt = None
    pretrain_dir: PretrainDirOpt = None
    pretrain_missing: PretrainMissingOpt = False
    shard: ShardOpt = None
    dry_run: DryRunOpt = False
    launcher: LauncherOpt = None
    jobs: JobsOpt = None
    slurm_partition: SlurmPartitionOpt = None
    slurm_time: SlurmTimeOpt = None
    slurm_gpus: SlurmGpusOpt = None
    slurm_array_parallelism: SlurmArrayParallelismOpt = None
    workers: WorkersOpt = None

    def flags(self) -> dict[str, Any]:
        return {
            "paths.data": path_str(self.data),
            "sweep.ratios": csv_list(self.ratios, float, "--ratios"),
            "sweep.inits": csv_list(self.inits, str, "--inits"),
            "sweep.tasks": csv_list(self.tasks, str, "--tasks"),
            "sweep.lrs": csv_list(self.lrs, float, "--lrs"),
            "sweep.low_ratio_lrs": csv_list(self.low_ratio_lrs, float, "--low-ratio-lrs"),
            "sweep.seeds": csv_list(self.seeds, int, "--seeds"),
            "sweep.low_ratio_seeds": csv_list(self.low_ratio_seeds, int, "--low-ratio-seeds"),
            "sweep.pretrain_dir": path_str(self.pretrain_dir),
            "sweep.pretrain_missing": True if self.pretrain_missing else None,
            "sweep.launcher": self.launcher,
            "sweep.jobs": self.jobs,
            "sweep.slurm.partition": self.slurm_partition,
            "sweep.slurm.time_min": self.slurm_time,
            "sweep.slurm.gpus": self.slurm_gpus,
            "sweep.slurm.array_parallelism": self.slurm_array_parallelism,
            "runtime.workers": self.workers,
        }


# --------------------------------------------------------------------------- check
@dataclass(frozen=True)
class CheckOptions(Options):
    """``echoclr check``."""

    data: DataOpt = None
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Also check this label column.")
    ] = None
    for_: Annotated[
        CheckFor | None,
        typer.Option("--for", help="Also check batches against this section's config."),
    ] = None

    def flags(self) -> dict[str, Any]:
        return {"paths.data": path_str(self.data)}


# --------------------------------------------------------------------------- demo
@dataclass(frozen=True)
class DemoOptions(Options):
    """``echoclr demo``."""

    root: Annotated[Path, typer.Option("--root", help="Where the demo writes everything.")] = Path(
        "demo"
    )


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportOptions(Options):
    """``echoclr report PATH`` (no config: it reads what the run recorded)."""

    path: Annotated[Path, typer.Argument(help="A fine-tune run dir or a sweep dir.")]
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="HTML file; .md, _files/ and .model_card.json beside."),
    ] = Path("report.html")
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset dir (default: the one recorded in the run)."),
    ] = None
    at_sensitivity: AtSensOpt = None
    at_threshold: AtThrOpt = None
    calibrate: CalibrateOpt = None
    bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help="Resamples when clinical metrics are recomputed."),
    ] = None
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report.")] = (
        False
    )
    verbose: VerboseOpt = False
