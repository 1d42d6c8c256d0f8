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

from pydantic import BaseModel, ConfigDict, Field, field_validator

from echoclr_cli.pretrain.methods import DEFAULT_METHOD, METHOD_NAMES, METHODS

# Profiles and example configs ship inside the package (echoclr_cli/configs/, read with
# importlib.resources); the repo's top-level configs/ is a symlink to it, the copy users read.
CONFIG_PACKAGE = "echoclr_cli"
CONFIG_SUBDIR = "configs"

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- runtime / paths
class RuntimeConfig(Section):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    workers: int = Field(4, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="global seed (model init, sampling, augmentation)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype; auto = bf16 on CUDA, fp32 on CPU. "
        "DIFFERS: the published scripts trained in fp32",
    )
    channels_last: bool = Field(True, description="channels_last_3d memory format on CUDA")
    cudnn_benchmark: bool = Field(True, description="torch.backends.cudnn.benchmark on CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch default)")
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard events (history scalars, embed projector, explain "
        "frames) under <out>/tensorboard; history.csv stays the source of truth",
    )
    sync_every: int = Field(
        25,
        ge=1,
        description="training steps between host syncs: the non-finite check (the error still "
        "names the first bad step; nonfinite_tolerance > 0 checks every step) and step logging",
    )
    sync_bn: bool = Field(
        False,
        description="DDP only: BatchNorm statistics over the global batch (SyncBatchNorm on CUDA, "
        "GlobalBatchNorm elsewhere) instead of per process (the published default)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class PathsConfig(Section):
    raw: Path = Field(Path("data/raw"), description="raw archive (synthetic default lives here)")
    data: Path = Field(Path("data/echo"), description="preprocessed dataset dir")
    runs: Path = Field(Path("runs"), description="root of run dirs")


# --------------------------------------------------------------------------- synth
class SynthConfig(Section):
    studies: int = Field(100, ge=1, description="number of studies")
    seed: int = Field(0, description="random seed (output is deterministic in it)")
    format: Literal["dicom", "avi", "mp4"] = Field("dicom", description="file format")
    height: int = Field(300, ge=64, description="raw frame height (pixels)")
    width: int = Field(400, ge=64, description="raw frame width (pixels)")
    min_frames: int = Field(40, ge=2)
    max_frames: int = Field(120, ge=2)
    min_fps: float = Field(30.0, gt=0)
    max_fps: float = Field(60.0, gt=0)
    min_videos: int = Field(1, ge=1, description="videos per study, lower bound")
    max_videos: int = Field(5, ge=1, description="videos per study, upper bound")
    as_prevalence: float = Field(0.22, ge=0, le=1, description="share of severe AS studies")
    lvh_prevalence: float = Field(0.30, ge=0, le=1, description="share of LVH studies")
    label_noise: float = Field(0.05, ge=0, le=0.5, description="label flip probability")
    repeat_patient_frac: float = Field(
        0.2, ge=0, le=1, description="share of patients with a second study in a later year"
    )
    external_frac: float = Field(
        0.15, ge=0, le=1, description="share of studies acquired at the external site"
    )
    compressed_frac: float = Field(
        0.5, ge=0, le=1, description="share of cine DICOMs written compressed (RLE or JPEG)"
    )
    jpeg_frac: float = Field(
        0.6,
        ge=0,
        le=1,
        description="share of the compressed cine DICOMs written as lossy JPEG Baseline "
        "(YBR_FULL_422) instead of RLE Lossless",
    )
    extras: bool = Field(True, description="add a still image and a structured report per study")
    workers: int = Field(
        2, ge=1, description="parallel worker processes (the output is identical for any count)"
    )
    views: list[Literal["plax", "psax", "a4c", "a2c"]] = Field(
        default_factory=lambda: ["plax"],
        min_length=1,
        description="echo views written per study; ['plax'] = the single-view archive. With "
        "several views every study gets 1-2 videos of each view (PLAX a minority when there "
        "are >= 2 other views; min_videos/max_videos then do not apply) and videos.csv a "
        "'view' column",
    )

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, v):
        """'plax,a4c' or a list; lower case, no repeats, in the order plax, psax, a4c, a2c."""
        if isinstance(v, str):
            v = v.split(",")
        if not isinstance(v, list | tuple):
            return v
        names = [str(x).strip().lower() for x in v if str(x).strip()]
        if len(set(names)) != len(names):
            raise ValueError(f"a view is listed twice in {names}")
        order = ["plax", "psax", "a4c", "a2c"]
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


# --------------------------------------------------------------------------- preprocess
class PreprocessConfig(Section):
    input: Path | None = Field(
        None, description="raw archive; None = the embedded synthetic archive (paths.raw)"
    )
    layout: Literal[
        "auto", "dicom", "video", "echoclr", "echonet", "synth", "mimic-echo", "echonet-lvh"
    ] = "auto"
    labels: Path | None = Field(None, description="label CSV for a plain DICOM/video tree")
    label_key: Literal["auto", "accession", "patient_id", "study_uid", "study_id", "study_date"] = (
        Field(
            "auto",
            description="which id the label CSV is keyed by, matched to a DICOM tag: accession "
            "(AccessionNumber), patient_id (PatientID/MRN), study_uid / study_id "
            "(StudyInstanceUID), study_date (StudyDate + PatientID); auto: found from the "
            "column names",
        )
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="output label column -> expression 'src_col' or 'src_col==value' or 'src_col>=x'",
    )
    label_rules: list[str] = Field(
        default_factory=list,
        description="label rules 'NAME = EXPRESSION' over the label table's columns "
        "(e.g. 'as = vmax >= 4 or mean_gradient >= 40'; missing -> unknown)",
    )
    label_presets: list[str] = Field(
        default_factory=list,
        description="guideline label presets with your column names, e.g. "
        "'as:vmax=AV_Vmax,mean_gradient=AV_MG,ava=AVA' or 'lvh:lvmi=LVMI,sex=Sex'",
    )
    labels_long: str = Field(
        "auto",
        description="label table with one row per measurement: auto | yes | no | "
        "NAME_COLUMN,VALUE_COLUMN (pivoted per id; duplicates -> mean)",
    )
    label_threshold: dict[str, float] = Field(
        default_factory=dict,
        description="EchoNet numeric columns to binarise: column -> threshold (value < thr -> 1)",
    )
    size: int = Field(112, ge=16, description="output frame size (square)")
    min_fps: float = Field(25.0, ge=0, description="videos below are skipped as low_fps")
    fallback_fps: float = Field(30.0, gt=0, description="fps used when a file gives none")
    min_frames: int = Field(
        16, ge=1, description="with short_videos=skip, videos with fewer frames are skipped"
    )
    max_frames: int = Field(100, ge=1, description="keep at most this many frames")
    color: Literal["auto", "gray", "rgb"] = Field(
        "auto", description="auto = gray when channels are equal"
    )
    skip_color_doppler: bool = Field(True, description="skip videos with color flow content")
    resize: Literal["whole_frame", "sector_crop"] = Field(
        "whole_frame",
        description="whole_frame (published): the whole masked frame resized to size x size, "
        "aspect not kept; sector_crop: crop to the sector's box, pad square, resize "
        "(the echoclr layout is never cropped)",
    )
    short_videos: Literal["pad", "skip"] = Field(
        "pad",
        description="pad (published): videos shorter than min_frames are kept and zero-padded "
        "when clips are drawn (only single-frame files skipped); skip: skipped as too_few_frames",
    )
    use_dicom_regions: bool = Field(
        True, description="use SequenceOfUltrasoundRegions when consistent with the image"
    )
    salt: str | None = Field(
        None,
        description="salt for de-identifying hashes; None = a random secret per dataset, kept "
        "in DATA/private/ (docs/PRIVACY.md)",
    )
    split: tuple[float, float, float] = Field((0.75, 0.10, 0.15), description="train/val/test")
    split_seed: int = 0
    external_after: int | None = Field(
        None, description="studies dated after this year go to ext_test"
    )
    external_column: str | None = Field(
        None, description="label-file column whose truthy value sends a study to ext_test"
    )
    external_input: Path | None = Field(
        None, description="separate raw dir (DICOM/video tree) whose files all go to ext_test"
    )
    view_column: str | None = Field(None, description="label-file column for a view filter")
    view_min: float = Field(0.5, description="keep rows with view_column >= view_min")
    view_value: str | None = Field(None, description="or keep rows with view_column == value")
    view_model: Path | None = Field(
        None,
        description="view classifier (multi-class run dir, or TorchScript/ONNX + .json "
        "class list) run on every stored video; needs keep_view",
    )
    keep_view: str | None = Field(None, description="view_model class to keep, e.g. plax")
    keep_view_min: float | None = Field(
        None, ge=0, le=1, description="also require p(keep_view) >= this (None: top class only)"
    )
    view_clips: int = Field(4, ge=1, description="evenly spaced clips per video for view_model")
    max_skipped_frac: float = Field(0.01, ge=0, le=1, description="fail above this skip share")
    allow_label_issues: bool = Field(
        False, description="accept label problems (bad values, duplicate or unmatched ids)"
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="parallel worker processes (auto: all cores but one)"
    )
    overwrite: bool = False


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
    optim: OptimConfig = Field(default_factory=OptimConfig)
    temperature: float = Field(0.05, gt=0)
    clip_len: int = Field(4, ge=1, le=64)
    stride: int = Field(1, ge=1)
    reorder_frames: int = Field(4, ge=2, le=5, description="K frames permuted (K! classes)")
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
    task: str = Field("as", description="binary label column in the manifest")
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
    pos_weight: str = Field("balanced", description="balanced | none | a number")
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
    patience: int = Field(5, ge=0, description="early stopping patience (0 = off)")
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
    nonfinite_tolerance: int = Field(0, ge=0)

    @field_validator("pos_weight")
    @classmethod
    def _pos_weight(cls, v: str) -> str:
        if v in ("balanced", "none"):
            return v
        try:
            if float(v) > 0:
                return v
        except ValueError:
            pass
        raise ValueError("must be 'balanced', 'none' or a positive number")


class EvaluateConfig(Section):
    clips_per_video: int | Literal["all"] = Field(4, description="N evenly spaced clips or 'all'")
    block_size: int = Field(32, ge=1, description="clips per forward block (bounds memory)")
    batch_size: int = Field(16, ge=1, description="videos per evaluation batch")
    bootstrap: int = Field(1000, ge=0, description="stratified bootstrap resamples (0 = no CI)")
    ci: float = Field(0.95, gt=0, lt=1, description="DIFFERS: a true 95% interval (2.5/97.5)")
    bootstrap_seed: int = 0
    bootstrap_unit: Literal["study", "item"] = Field(
        "study",
        description="video-level CIs resample whole studies (study) or videos as if "
        "independent (item); study-level CIs resample studies either way",
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
    ratios: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    inits: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="auto = random + kinetics (if weights) + every SSL run found",
    )
    tasks: list[str] = Field(default_factory=lambda: ["as", "lvh"])
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
