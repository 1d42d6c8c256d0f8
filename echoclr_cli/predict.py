"""``echoclr predict``: probabilities of a fine-tuned run for new, unlabelled studies.

The input is a dataset dir (``manifest.csv``) or raw DICOM/video files, which are first
preprocessed at the run's frame size. The public CSVs carry the dataset's (hashed) ids only;
when the dataset maps them back to the user's original ids (its ``id_map.csv``), that mapping for
the predicted rows goes to a private folder next to the CSVs (``private/``, created 0700, files
0600), never into the public files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from echoclr_cli import rundir
from echoclr_cli.aggregate import aggregate_levels
from echoclr_cli.config import Config
from echoclr_cli.data import privacy
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.evaluate import LoadedRun, device_and_autocast, load_run, predict_split_videos
from echoclr_cli.events import Progress, counter
from echoclr_cli.io import atomic_write_csv


@dataclass
class PredictResult:
    """What ``echoclr predict`` wrote."""

    video_csv: Path
    study_csv: Path
    data_dir: Path
    preprocessed: bool  # True when the input was raw files, preprocessed into data_dir
    n_videos: int
    n_studies: int
    video: pd.DataFrame
    study: pd.DataFrame
    original_ids_csv: Path | None = None  # private: hashed -> original ids of the rows predicted


def study_csv_path(out_csv: Path) -> Path:
    """``preds.csv`` -> ``preds_study.csv`` (the study-level companion file)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}_study{out_csv.suffix or '.csv'}")


def original_ids_path(out_csv: Path) -> Path:
    """``dir/preds.csv`` -> ``dir/private/preds_original_ids.csv``."""
    out_csv = Path(out_csv)
    return out_csv.parent / privacy.PRIVATE / f"{out_csv.stem}_original_ids.csv"


def predict(
    cfg: Config,
    run_dir: Path,
    input_path: Path,
    out_csv: Path,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PredictResult:
    """Probabilities of a fine-tuned run for every video and study of ``input_path``; no labels needed.

    ``input_path`` is a dataset dir (has ``manifest.csv``; every split is predicted) or raw
    DICOM/video files, which are first preprocessed with ``echoclr_cli.preprocess.preprocess``
    (at the run's frame size) into the sibling dir ``<out_csv stem>_data/`` (kept: it holds
    ``skipped.csv`` and the dataset's private id map).
    Writes ``out_csv`` (one row per video: ``video_id, study_id, patient_id, split, y_prob,
    n_clips``) and ``<stem>_study.csv`` (one row per study: ``study_id, patient_id, y_prob,
    n_videos``), with the dataset's hashed ids only. When the dataset has an id map, the
    original ids of the predicted rows go to ``private/<stem>_original_ids.csv`` next to
    ``out_csv`` (``video_id, study_id, patient_id, original_video, original_study_id,
    original_patient_id``; folder 0700, file 0600). Existing outputs are refused unless
    ``overwrite``; every argument is checked before the first write.
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
    if Path(run_dir).is_file():  # a model file written by `echoclr export` (+ its contract)
        from echoclr_cli.export import exported_run

        run = exported_run(Path(run_dir), cfg)
    else:
        run = load_run(Path(run_dir), device)
    input_path = Path(input_path)
    preprocessed = False
    if (input_path / "manifest.csv").exists():
        data_dir = input_path
    else:
        data_dir = out_csv.with_name(f"{out_csv.stem}_data")
        _preprocess_for_predict(cfg, run, input_path, data_dir, overwrite, progress)
        preprocessed = True
    df = load_manifest(data_dir)
    split_of = dict(zip(df["video_id"].astype(str), df["split"], strict=True))
    from echoclr_cli.multiclass import is_multiclass_run

    if Path(run_dir).is_dir() and is_multiclass_run(Path(run_dir)):  # one prob column per class
        from echoclr_cli.multiclass_train import predict_multiclass_tables

        video_out, study_out = predict_multiclass_tables(cfg, run, df, data_dir, progress)
    else:
        video = predict_split_videos(run, cfg, df, data_dir, None, progress)
        # aggregate() needs labels: a constant stand-in, dropped again below.
        levels = aggregate_levels(video.assign(y_true=-1))
        video_out = levels["video"].drop(columns=["y_true"])
        study_out = levels["study"].drop(columns=["y_true"])
    video_out.insert(3, "split", video_out["video_id"].map(split_of))
    original = privacy.read_id_map(data_dir)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_csv, video_out)
    atomic_write_csv(study_csv, study_out)
    written_private = None
    if original:  # preprocess de-identified the ids: the way back stays private
        privacy.write_private_csv(
            private_csv.parent.parent, private_csv.name, _original_table(video_out, original)
        )
        written_private = private_csv
    return PredictResult(
        out_csv,
        study_csv,
        data_dir,
        preprocessed,
        len(video_out),
        len(study_out),
        video_out,
        study_out,
        written_private,
    )


def _original_table(video: pd.DataFrame, original: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per predicted video: its hashed ids and the original ones they stand for."""

    def back(kind: str, values: pd.Series) -> pd.Series:
        table = original.get(kind, {})
        return values.astype(str).map(lambda v: table.get(v))

    return pd.DataFrame(
        {
            "video_id": video["video_id"],
            "study_id": video["study_id"],
            "patient_id": video["patient_id"],
            "original_video": back("video", video["video_id"]),
            "original_study_id": back("study", video["study_id"]),
            "original_patient_id": back("patient", video["patient_id"]),
        }
    )


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
    from echoclr_cli.preprocess import preprocess

    if data_dir.exists() and any(data_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{data_dir} (the preprocessed input of an earlier predict) already exists",
            fix=f"pass {data_dir} as the input to reuse it, or --overwrite",
        )
    size = rundir.read_finetune_facts(run.run_dir).get("frame_size") or run.cfg.preprocess.size
    pp = cfg.preprocess.model_copy(
        update={"size": int(size), "input": input_path, "overwrite": True}
    )
    cb = counter(progress, "preprocess")
    preprocess(cfg.model_copy(update={"preprocess": pp}), input_path, data_dir, progress=cb)
