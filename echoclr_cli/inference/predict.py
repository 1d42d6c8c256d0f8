"""``echoclr predict``: probabilities (and calls) of a fine-tuned run for new, unlabelled studies.

The input is a dataset dir (``manifest.csv``) or raw DICOM/video files, which are first
preprocessed at the run's frame size into a temporary folder (removed afterwards) or the folder
given as ``keep_data``. Beside ``--out preds.csv`` exactly three files are written:
``preds.csv`` (videos) and ``preds_study.csv`` (studies), which carry the dataset's hashed ids
only, and ``preds.private.csv`` (mode 0600), the way back to the worklist: for every predicted
video its hashed ids with the original file, AccessionNumber, PatientID and StudyInstanceUID.
The private file is written when the dataset maps its ids back to the originals (every raw
input; a dataset dir with ``private/id_map.csv``).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data import privacy
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress, counter
from echoclr_cli.inference.exported import exported_run
from echoclr_cli.inference.run import LoadedRun, device_and_autocast, load_run, predict_rows
from echoclr_cli.io import atomic_write_csv
from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.preprocess.run import preprocess

THRESHOLD_VAL = "val"  # the run's operating point chosen on validation (Youden, per level)
VAL_POINT = "youden"  # which of the validation-chosen thresholds (metrics.json) `val` is
# The DICOM tags the private file carries, read from the header of each original file.
HEADER_TAGS = ("AccessionNumber", "PatientID", "StudyInstanceUID")


@dataclass
class PredictResult:
    """What ``echoclr predict`` wrote."""

    video_csv: Path
    study_csv: Path
    data_dir: Path | None  # the preprocessed input when kept (a dataset dir input: itself)
    preprocessed: bool  # True when the input was raw files, preprocessed first
    n_videos: int
    n_studies: int
    video: pd.DataFrame
    study: pd.DataFrame
    original_ids_csv: Path | None = None  # private: hashed -> original ids of the rows predicted
    thresholds: dict[str, float] | None = None  # level -> threshold of y_pred (binary runs)
    threshold_source: str | None = None  # "val" (the run's) or "user"
    skipped: dict[str, int] = field(default_factory=dict)  # raw input: reason -> files
    notes: list[str] = field(default_factory=list)


def study_csv_path(out_csv: Path) -> Path:
    """``preds.csv`` -> ``preds_study.csv`` (the study-level companion file)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}_study{out_csv.suffix or '.csv'}")


def original_ids_path(out_csv: Path) -> Path:
    """``dir/preds.csv`` -> ``dir/preds.private.csv`` (the private way back to the worklist)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.private.csv")


def predict(
    cfg: Config,
    run_dir: Path,
    input_path: Path,
    out_csv: Path,
    overwrite: bool = False,
    progress: Progress | None = None,
    keep_data: Path | None = None,
    threshold: str | float | None = None,
    trust_model_code: bool = False,
) -> PredictResult:
    """Probabilities of a fine-tuned run for every video and study of ``input_path``; no labels needed.

    ``input_path`` is a dataset dir (has ``manifest.csv``; every split is predicted and the
    ``split`` column says which) or raw DICOM/video files, which are first preprocessed with
    ``echoclr_cli.preprocess.run.preprocess`` at the run's frame size into a temporary folder,
    removed afterwards, or into ``keep_data`` (kept: ``skipped.csv``, the dataset's private id
    map). New studies get no ``split`` column.
    Writes ``out_csv`` (one row per video: ``video_id, study_id, patient_id, [split,] y_prob,
    [y_pred,] n_clips``) and ``<stem>_study.csv`` (one row per study: ``study_id, patient_id,
    y_prob, [y_pred,] n_videos``), with the dataset's hashed ids only, and, when the dataset
    maps them back, ``<stem>.private.csv`` (mode 0600; see :func:`private_table`). Nothing else
    is written beside ``out_csv``.
    ``threshold``: ``"val"`` = ``y_pred`` at the run's operating point chosen on validation
    (Youden, per level; refused when the run has none), a probability = ``y_pred = y_prob >=
    threshold``, None = ``val`` when the run has it, else no ``y_pred``. A multi-class run's
    ``y_pred`` is always its top class (a number is refused). Existing outputs are refused
    unless ``overwrite``; every argument is checked before the first write.
    ``run_dir`` may also be a model file ``echoclr export`` wrote: ONNX, or TorchScript only
    with ``trust_model_code`` (its code runs; ``inference.exported.check_model_file``).
    """
    out_csv = Path(out_csv)
    study_csv = study_csv_path(out_csv)
    private_csv = original_ids_path(out_csv)
    for p in (out_csv, study_csv, private_csv):
        if p.exists() and not overwrite:
            raise UserError(f"{p} already exists", fix="pass --overwrite or another output path")
    if out_csv.exists() and out_csv.is_dir():
        raise UserError(f"--out {out_csv} is a folder", fix="pass a CSV file path, e.g. preds.csv")
    device, _ = device_and_autocast(cfg)
    exported = Path(run_dir).is_file()  # a model file written by `echoclr export` (+ its contract)
    run = (
        exported_run(Path(run_dir), cfg, trust_model_code=trust_model_code)
        if exported
        else load_run(Path(run_dir), device)
    )
    multiclass = run.task.is_multiclass
    thresholds, source, notes = resolve_threshold(threshold, Path(run_dir), exported, multiclass)
    input_path = Path(input_path)
    is_dataset = (input_path / "manifest.csv").exists()
    if is_dataset and keep_data is not None:
        raise UserError(
            f"--keep-data: {input_path} is already a dataset (it has manifest.csv)",
            fix="drop --keep-data (it names where raw input files are preprocessed to)",
        )
    tmp_dir = None
    try:
        skipped: dict[str, int] = {}
        if is_dataset:
            data_dir = input_path
        else:
            if keep_data is not None:
                data_dir = Path(keep_data)
            else:  # not beside the CSV: a private temporary folder (0700), removed below
                tmp_dir = Path(tempfile.mkdtemp(prefix="echoclr-predict-"))
                data_dir = tmp_dir / "data"
            try:
                _preprocess_for_predict(cfg, run, input_path, data_dir, overwrite, progress)
            except UserError as e:
                if tmp_dir is None:
                    raise
                raise _without_temporary(e, data_dir) from None
            skipped = _skipped_counts(data_dir)
        df = load_manifest(data_dir)
        video = predict_rows(run, cfg, df, data_dir, labelled=False, progress=progress)
        if multiclass:  # one prob column per class and the top class
            video_out, study_out = class_tables(video, run.task.classes)
        else:
            # aggregate() needs labels: a constant stand-in, dropped again below.
            levels = aggregate_levels(video.assign(y_true=-1))
            video_out = levels["video"].drop(columns=["y_true"])
            study_out = levels["study"].drop(columns=["y_true"])
            if thresholds is not None:
                for frame, level in ((video_out, "video"), (study_out, "study")):
                    calls = (frame["y_prob"] >= thresholds[level]).astype(int)
                    frame.insert(frame.columns.get_loc("y_prob") + 1, "y_pred", calls)
        if is_dataset:  # the dataset's own splits; new (raw) studies have none
            split_of = dict(zip(df["video_id"].astype(str), df["split"], strict=True))
            video_out.insert(3, "split", video_out["video_id"].astype(str).map(split_of))
        original = privacy.read_id_map(data_dir)
        private = private_table(video_out, original, data_dir) if original else None
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(out_csv, video_out)
        atomic_write_csv(study_csv, study_out)
        if private is not None:  # preprocess de-identified the ids: the way back stays private
            atomic_write_csv(private_csv, private, perms=privacy.FILE_MODE)
        elif private_csv.exists():  # --overwrite: an earlier run's file would not match
            private_csv.unlink()
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return PredictResult(
        out_csv,
        study_csv,
        None if tmp_dir is not None else data_dir,
        not is_dataset,
        len(video_out),
        len(study_out),
        video_out,
        study_out,
        private_csv if private is not None else None,
        thresholds,
        source,
        skipped,
        notes,
    )


def class_tables(
    video: pd.DataFrame, classes: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A K-class run's tables: per video ``video_id, study_id, patient_id, prob_<class>`` x K,
    ``y_pred`` (top class), ``n_clips``; per study the mean of its videos' probabilities,
    ``y_pred`` and ``n_videos``."""
    cols = [f"prob_{c}" for c in classes]
    names = np.asarray(classes, dtype=object)
    video = (
        video.drop(columns=["y_true"]).sort_values(["study_id", "video_id"]).reset_index(drop=True)
    )
    video.insert(
        3 + len(cols), "y_pred", names[video[cols].to_numpy().argmax(axis=1)] if len(video) else []
    )
    study = (
        video.groupby("study_id", sort=True)
        .agg(patient_id=("patient_id", "first"), n_videos=("video_id", "size"))
        .join(video.groupby("study_id", sort=True)[cols].mean())
        .reset_index()
    )
    study["y_pred"] = names[study[cols].to_numpy().argmax(axis=1)] if len(study) else []
    return video, study


# --------------------------------------------------------------------------- y_pred
def val_thresholds(run_dir: Path) -> dict[str, float] | None:
    """``{"video": t, "study": t}``: the run's Youden operating points chosen on its validation
    split (``metrics.json`` ``"thresholds"``, written by ``finetune``); None when the run has
    none (no val split, a one-class val split, no metrics.json)."""
    path = Path(run_dir) / rundir.METRICS
    try:
        chosen = json.loads(path.read_text()).get("thresholds") or {}
    except (OSError, ValueError, AttributeError):
        return None
    out = {}
    for level in ("video", "study"):
        t = (chosen.get(level) or {}).get(VAL_POINT)
        if not isinstance(t, (int, float)) or not math.isfinite(t):
            return None
        out[level] = float(t)
    return out


def resolve_threshold(
    threshold: str | float | None, run_dir: Path, exported: bool, multiclass: bool
) -> tuple[dict[str, float] | None, str | None, list[str]]:
    """(level -> threshold of ``y_pred`` or None, its source ``val``/``user``, notes)."""
    text = None if threshold is None else str(threshold).strip().lower()
    value = None
    if text is not None and text != THRESHOLD_VAL:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also NaN
            raise UserError(
                f"--threshold {threshold!s} is neither 'val' nor a probability in [0, 1]",
                fix="pass --threshold val (the run's validation operating point) or e.g. 0.5",
            )
    if multiclass:
        if value is not None:
            raise UserError(
                f"--threshold {threshold!s}: {run_dir} is a multi-class run; its y_pred is the "
                "class with the highest probability",
                fix="drop --threshold (or pass --threshold val)",
            )
        return None, None, []
    if value is not None:
        return {"video": value, "study": value}, "user", []
    chosen = None if exported else val_thresholds(run_dir)
    if chosen is not None:
        return chosen, THRESHOLD_VAL, []
    why = (
        f"{run_dir} is an exported model, which carries no validation operating point"
        if exported
        else f"{run_dir} has no operating point chosen on validation ({rundir.METRICS} "
        "'thresholds': no val split, or a one-class one)"
    )
    if text == THRESHOLD_VAL:
        raise UserError(f"--threshold val: {why}", fix="pass a probability, e.g. --threshold 0.5")
    return None, None, [f"no y_pred: {why}; pass --threshold <probability> for one"]


# --------------------------------------------------------------------------- private ids
def private_table(
    video: pd.DataFrame, original: dict[str, dict[str, str]], data_dir: Path
) -> pd.DataFrame:
    """One row per predicted video: its hashed ids, the original file, the DICOM header ids
    (``AccessionNumber, PatientID, StudyInstanceUID``, read again from the original file; empty
    for video files or a file no longer there) and the original study/patient ids the dataset
    used (the header ones, else folder names)."""

    def back(kind: str, values: pd.Series) -> pd.Series:
        table = original.get(kind, {})
        return values.astype(str).map(lambda v: table.get(v, ""))

    root = _input_root(data_dir)
    files = back("video", video["video_id"])
    headers = pd.DataFrame(
        [_header_ids(root / f) if root is not None and f else {} for f in files],
        index=video.index,
        columns=list(HEADER_TAGS),
    ).fillna("")
    out = pd.DataFrame(
        {
            "video_id": video["video_id"],
            "study_id": video["study_id"],
            "patient_id": video["patient_id"],
            **{tag: headers[tag] for tag in HEADER_TAGS},
            "original_file": [str(root / f) if root is not None and f else f for f in files],
            "original_study_id": back("study", video["study_id"]),
            "original_patient_id": back("patient", video["patient_id"]),
        }
    )
    return out


def _input_root(data_dir: Path) -> Path | None:
    """The raw input folder the dataset was preprocessed from (``private/inputs.json``)."""
    path = Path(data_dir) / privacy.PRIVATE / privacy.RUN_FILE
    try:
        root = json.loads(path.read_text()).get("input")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(root) if root else None


def _header_ids(path: Path) -> dict[str, str]:
    """AccessionNumber, PatientID and StudyInstanceUID of a DICOM file (header only); {} for
    a video file or a file that is gone."""
    import pydicom

    from echoclr_cli.data.bounds import header_warnings

    with header_warnings():  # pydicom's warnings hold tag values: caught, never printed
        try:
            if not path.is_file():
                return {}
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except Exception:  # not DICOM (AVI/MP4) or unreadable: the columns stay empty
            return {}
        return {tag: str(ds.get(tag) or "").strip() for tag in HEADER_TAGS}


# --------------------------------------------------------------------------- raw input
def _skipped_counts(data_dir: Path) -> dict[str, int]:
    """reason -> files skipped by the preprocess of the raw input (``skipped.csv``)."""
    path = Path(data_dir) / "skipped.csv"
    if not path.is_file():
        return {}
    reasons = pd.read_csv(path, dtype=str, keep_default_na=False).get("reason", [])
    return dict(sorted(Counter(reasons).items()))


def _without_temporary(e: UserError, data_dir: Path) -> UserError:
    """A preprocess error naming the temporary folder (removed by then): DIR of --keep-data."""
    text = str(data_dir)
    if text not in e.message and text not in (e.fix or ""):
        return e
    fix = (e.fix or "").replace(text, "DIR")
    keep = "re-run with --keep-data DIR to keep the preprocessed input"
    return UserError(e.message.replace(text, "DIR"), fix=f"{fix} ({keep})" if fix else keep)


def _preprocess_for_predict(
    cfg: Config,
    run: LoadedRun,
    input_path: Path,
    data_dir: Path,
    overwrite: bool,
    progress: Progress | None,
) -> None:
    """Preprocess raw input into ``data_dir`` at the frame size the run was trained on."""
    if not input_path.exists():
        raise UserError(
            f"input {input_path} does not exist", fix="pass a dataset dir or raw DICOM/video files"
        )
    if data_dir.exists() and any(data_dir.iterdir()) and not overwrite:
        raise UserError(
            f"--keep-data {data_dir} already exists and is not empty",
            fix=f"pass {data_dir} as --input to reuse it, another --keep-data, or --overwrite",
        )
    size = rundir.read_finetune_facts(run.run_dir).get("frame_size") or run.cfg.preprocess.size
    pp = cfg.preprocess.model_copy(
        update={"size": int(size), "input": input_path, "overwrite": True}
    )
    cb = counter(progress, "preprocess")
    preprocess(cfg.model_copy(update={"preprocess": pp}), input_path, data_dir, progress=cb)
