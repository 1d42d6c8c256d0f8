"""The config's base section and its data-side sections: runtime, paths, synth, preprocess.

The training sections and the whole ``Config`` tree are in ``config/schema.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from echoclr_cli.config.names import Name


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
    label_map: dict[Name, str] = Field(
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
    max_pixels: int = Field(
        1024 * 1024 * 3 * 1000,
        ge=1,
        description="pixel budget per input file, checked from its header before decoding: "
        "rows x cols x frames x samples above it is skipped as too_large (default: 1024 x 1024 "
        "RGB x 1000 frames)",
    )
    max_label_bytes: int = Field(
        1 << 30,
        ge=1,
        description="largest label file in bytes, counted after decompression for .gz/.bz2/.xz/"
        ".zip (a larger one is refused, naming the file)",
    )
    follow_external_links: bool = Field(
        False,
        description="read files behind links that leave the input folder (default: skipped as "
        "outside_archive; links inside it are always followed once)",
    )
    allow_label_issues: bool = Field(
        False, description="accept label problems (bad values, duplicate or unmatched ids)"
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="parallel worker processes (auto: all cores but one)"
    )
    overwrite: bool = False
