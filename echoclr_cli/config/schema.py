"""Typed configuration: code defaults < profile < --config YAML < flags / --set.

Defaults in code are the published EchoCLR settings (docs/METHOD.md). `configs/demo.yaml` is the
small CPU profile. Every section is a pydantic model with ``extra="forbid"`` so an unknown key or a
wrong type is refused before any work, naming the key and the closest valid key.

Where we deliberately differ from the published setup the field's description says so
(``DIFFERS:``); docs/METHOD_NOTES.md explains why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from echoclr_cli.config.names import Name
from echoclr_cli.config.sections import (
    PathsConfig,
    PreprocessConfig,
    RuntimeConfig,
    Section,
    SynthConfig,
)
from echoclr_cli.pretrain.methods import DEFAULT_METHOD, METHOD_NAMES, METHODS

# Profiles and example configs ship inside the package (echoclr_cli/configs/, read with
# importlib.resources); the repo's top-level configs/ is a symlink to it, the copy users read.
CONFIG_PACKAGE = "echoclr_cli"
CONFIG_SUBDIR = "configs"

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


# --------------------------------------------------------------------------- model / training
class ModelConfig(Section):
    arch: Literal["r3d_18", "r2plus1d_18", "mc3_18"] = "r3d_18"
    width: float = Field(
        1.0, gt=0, le=4, description="channel multiplier (1.0 = torchvision's model exactly)"
    )
    proj_hidden: int = Field(256, ge=1)
    proj_dim: int = Field(128, ge=1)


class AugmentConfig(Section):
    enabled: bool = True
    pad: int = Field(8, ge=0, description="zero-pad then random crop back to size")
    flip_p: float = Field(0.5, ge=0, le=1)
    rotate_p: float = Field(0.5, ge=0, le=1)
    max_degrees: int = Field(10, ge=0, le=180, description="integer angle in [-d, d]")


class OptimConfig(Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    schedule: Literal["none", "cosine", "step"] = "none"
    warmup_epochs: int = Field(0, ge=0)


class PretrainConfig(Section):
    method: Literal[METHOD_NAMES] = DEFAULT_METHOD  # pretrain/methods.py, the registry
    epochs: int | None = Field(
        None,
        ge=1,
        description="None = the method's published count (pretrain_epochs): SimCLR 520, "
        "MI-SimCLR and EchoCLR 300",
    )
    batch_size: int = Field(
        392,
        ge=2,
        description="GLOBAL batch in pairs (all processes together; each takes batch/world "
        "size); paper: 2 GPUs x 196 = 392, NT-Xent over all of them",
    )
    view_forward: Literal["separate", "joint"] = Field(
        "separate",
        description="separate = one forward call per view, BatchNorm statistics per view (paper); "
        "joint = both views in one 2B forward (shared statistics, one call)",
    )
    bn_group_size: int = Field(
        196,
        ge=0,
        description="BatchNorm in groups of this many clips of a view along the global batch "
        "(the published 2-GPU DataParallel replicas: 196), whatever the number of processes; "
        "0 = the whole per-process batch",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    temperature: float = Field(0.05, gt=0)
    clip_len: int = Field(4, ge=1, le=64)
    stride: int = Field(1, ge=1)
    reorder_frames: int = Field(4, ge=2, le=5, description="K frames permuted (K! classes)")
    reorder_head: Literal["linear", "frames"] = Field(
        "linear",
        description="EchoCLR order head: linear = Linear on the pooled features (paper); "
        "frames = an MLP on each frame pair's layer1 map difference (mean |D| and its signed "
        "y/x moments), stem and layer1 run on each frame alone (docs/METHOD_NOTES.md)",
    )
    nt_xent_weight: float = Field(1.0, ge=0)
    reorder_weight: float = Field(1.0, ge=0)
    exclude_same_study_negatives: bool = Field(
        False, description="mask other pairs of the same study as negatives (paper: off)"
    )
    pair_within: Literal["study", "study_view"] = Field(
        "study_view",
        description="MI-SimCLR/EchoCLR positive pairs: two videos of one study, and of one view "
        "when the manifest has a view column (view, else view_pred); the paper's data was "
        "PLAX-only, so its within-study pairs were within-view",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    checkpoint_every: int = Field(20, ge=1, description="keep checkpoints/epoch_N.pt every N")
    probe_every: int = Field(0, ge=0, description="label probe every N epochs (0 = off)")
    probe: Literal["knn", "logreg"] = "logreg"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    nonfinite_tolerance: int = Field(0, ge=0, description="non-finite losses skipped before stop")
    split: str = Field("train", description="split(s) used for pretraining, comma separated")


class FinetuneConfig(Section):
    task: Name = Field("as", description="binary label column in the manifest")
    init: str = Field("random", description="random | kinetics | SSL run dir | checkpoint file")
    weights: Path | None = Field(
        None, description="Kinetics-400 weight file (else torch hub cache)"
    )
    allow_missing: bool = Field(False, description="allow backbone tensors that do not load")
    normalize: Literal["auto", "kinetics", "none"] = Field(
        "auto",
        description="input mean/std after min-max: auto = Kinetics-400 statistics for "
        "init kinetics, none otherwise",
    )
    frac: float = Field(1.0, gt=0, le=1, description="fraction of labeled training studies")
    frac_seed: int = Field(0, description="seed for the nested study subsets")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(88, ge=1)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(learning_rate=1e-4))
    clip_len: int = Field(16, ge=1)
    stride: int = Field(1, ge=1)
    dropout: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="DIFFERS: applied before the linear head (published code dropped logits)",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="targets y*(1-s)+s/2; paper 0 (the published code parsed 0.1 and never "
        "applied it)",
    )
    pos_weight: str = Field(
        "published",
        description="positive-class weight: published = max(1, n_neg / n_pos) (the published "
        "scripts); balanced = n_neg / n_pos (below 1 when positives are the majority); none; or "
        "a number",
    )
    mode: Literal["full", "linear", "lp-ft"] = Field(
        "full", description="full fine-tune, frozen-backbone linear probe, or LP then FT"
    )
    lp_epochs: int = Field(5, ge=0, description="linear-probe epochs before full FT (lp-ft)")
    monitor: Literal["val_loss", "val_auroc"] = "val_loss"
    val_clips: int | None = Field(
        None,
        ge=1,
        description="clips per video for the per-epoch validation (None = evaluate.clips_per_video); "
        "the final evaluation always uses evaluate.clips_per_video",
    )
    patience: int = Field(
        5,
        ge=0,
        description="early stopping patience (0 = off) of a binary task; a multi-class task uses "
        "multiclass_patience instead",
    )
    early_stop: Literal["published", "ours"] = Field(
        "published",
        description="published = monitor the unweighted BCE of the clip-averaged probability per "
        "val video (val_bce_video), stop after patience + 1 epochs without improvement; ours = "
        "finetune.monitor, stop after patience epochs without improvement",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="cap on training steps per epoch of a binary task (None = every batch); a "
        "multi-class task (--task view) uses multiclass_max_steps_per_epoch instead",
    )
    multiclass_max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="cap on training steps per epoch of a multi-class task (finetune --task "
        "view; None = every batch). Separate from max_steps_per_epoch, whose demo value (4) "
        "starved a view model",
    )
    multiclass_patience: int = Field(
        0,
        ge=0,
        description="early stopping patience of a multi-class task (finetune --task view; 0 = "
        "off: every epoch runs, the best validation epoch is kept). Separate from patience, whose "
        "demo value (4) stopped a 112 px view model at epoch 7 on a noisy validation loss",
    )
    nonfinite_tolerance: int = Field(0, ge=0)

    @field_validator("pos_weight")
    @classmethod
    def _pos_weight(cls, v: str) -> str:
        if v in ("published", "balanced", "none"):
            return v
        try:
            if float(v) > 0:
                return v
        except ValueError:
            pass
        raise ValueError("must be 'published', 'balanced', 'none' or a positive number")


class EvaluateConfig(Section):
    clips_per_video: int | Literal["all"] = Field(4, description="N evenly spaced clips or 'all'")
    block_size: int = Field(32, ge=1, description="clips per forward block (bounds memory)")
    batch_size: int = Field(16, ge=1, description="videos per evaluation batch")
    bootstrap: int = Field(1000, ge=0, description="stratified bootstrap resamples (0 = no CI)")
    ci: float = Field(0.95, gt=0, lt=1, description="DIFFERS: a true 95% interval (2.5/97.5)")
    bootstrap_seed: int = 0
    bootstrap_unit: Literal["patient", "study", "item"] = Field(
        "patient",
        description="DIFFERS: what every CI and paired test resamples: whole patients "
        "(patient; the study where the manifest has no patient id, said in the output), whole "
        "studies (study; video level), or the rows as if independent (item)",
    )
    clip_starts: Literal["published", "linspace"] = Field(
        "published",
        description="evaluation clip starts: published = arange(0, T-L, (T-L)//N)[:N] (never "
        "the very end); linspace = floor(linspace(0, T-L, N))",
    )
    scaling: Literal["video", "clip"] = Field(
        "video",
        description="evaluation min-max scaling over all clips of a video (published) or per clip",
    )
    splits: list[str] = Field(
        default_factory=lambda: ["test", "ext_test"],
        description="splits evaluated after fine-tuning (val always; absent splits are noted)",
    )
    plots: bool = True
    at_sensitivity: float | None = Field(
        None, gt=0, le=1, description="extra operating point: val threshold reaching this sens."
    )
    at_threshold: float | None = Field(
        None, ge=0, le=1, description="extra operating point at this fixed probability"
    )
    calibrate: Literal["none", "temperature", "platt", "both"] = Field(
        "none", description="recalibration fitted on val, reported next to the raw probabilities"
    )
    subgroups: list[str] | None = Field(
        None, description="manifest columns for subgroup metrics (None = every suitable one)"
    )
    subgroup_min_n: int = Field(20, ge=1, description="subgroups below this count are flagged")


class SlurmConfig(Section):
    """``echoclr sweep --launcher slurm``: the job array's sbatch parameters (docs/SLURM.md)."""

    partition: str | None = Field(None, description="SLURM partition (None = cluster default)")
    time_min: int = Field(240, ge=1, description="time limit of one array task, minutes")
    gpus: int = Field(1, ge=0, description="GPUs per array task")
    cpus: int = Field(8, ge=1, description="CPUs per array task (loader workers + 1)")
    mem_gb: int | None = Field(None, ge=1, description="memory per array task, GB")
    array_parallelism: int = Field(32, ge=1, description="array tasks running at once")
    signal_delay_s: int = Field(
        120, ge=10, description="USR2 this long before the time limit: checkpoint and requeue"
    )
    max_requeue: int = Field(3, ge=0, description="requeues after a time-out (preemption: any)")
    account: str | None = None
    qos: str | None = None
    job_name: str = "echoclr-sweep"


class SweepConfig(Section):
    ratios: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0],
        description="label fractions (the published scripts ran these seven)",
    )
    inits: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="auto = random + kinetics (if weights) + every SSL run found",
    )
    tasks: list[Name] = Field(default_factory=lambda: ["as", "lvh"])
    lrs: list[float] = Field(default_factory=lambda: [1e-4])
    low_ratio_lrs: list[float] = Field(
        default_factory=lambda: [1e-5, 1e-4, 5e-4], description="LR grid at ratio <= low_ratio"
    )
    low_ratio: float = 0.10
    seeds: list[int] = Field(default_factory=lambda: [0])
    low_ratio_seeds: list[int] | None = Field(
        None,
        description="seeds at ratio <= low_ratio, where seed-to-seed spread is largest "
        "(None = sweep.seeds)",
    )
    pretrain_dir: Path | None = Field(None, description="where SSL runs live (paths.runs/pretrain)")
    pretrain_missing: bool = False
    splits: list[str] = Field(default_factory=lambda: ["test", "ext_test"])
    select_metric: Literal["val_auroc", "val_loss"] = "val_auroc"
    run_plots: bool = Field(
        True,
        description="per-run ROC/PR/calibration figures (the sweep figure follows evaluate.plots)",
    )
    launcher: Literal["inline", "local", "slurm"] = Field(
        "inline",
        description="inline = train here; local / slurm = submitit jobs (pip install "
        "'echoclr[cluster]')",
    )
    jobs: int = Field(
        0,
        ge=0,
        description="local / slurm: jobs (array tasks) for the runs; 0 = one per run (slurm), "
        "one per visible GPU (local; 1 on CPU)",
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class Config(Section):
    profile: Literal["paper", "demo"] = "paper"
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)


# --------------------------------------------------------------------------- method defaults
def pretrain_epochs(pc: PretrainConfig) -> int:
    """The pretraining epochs: ``pretrain.epochs`` when set, else the method's published count
    (SimCLR 520, MI-SimCLR / EchoCLR 300). The one place this default is decided."""
    return pc.epochs if pc.epochs is not None else METHODS[pc.method].published_epochs


def with_pretrain_epochs(cfg: Config) -> Config:
    """``cfg`` with ``pretrain.epochs`` resolved (so a run's config.yaml records the number)."""
    if cfg.pretrain.epochs is not None:
        return cfg
    pc = cfg.pretrain.model_copy(update={"epochs": pretrain_epochs(cfg.pretrain)})
    return cfg.model_copy(update={"pretrain": pc})
