"""Manifest schema, validation and patient-level splits of a dataset dir.

``DATA/manifest.csv`` has one row per stored video:
``video_id, study_id, patient_id, split, path, n_frames, fps, fps_source, height, width, channels,
study_year, source_hash``, the optional de-identified DICOM columns ``manufacturer, model, sex,
age_band, frame_rate_band`` (empty when unknown), plus one column per binary label (0/1, empty =
unknown).
``DATA/dataset.json`` lists the label columns. :func:`load_manifest` is the preflight every command
runs before training: it is cheap (no file is opened, only ``os.path.exists``), normalises split
spellings, refuses unknown splits and patient/study leakage, and lists all missing files at once.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.data.dicom_fields import public_vendor_columns
from echoclr_cli.errors import UserError
from echoclr_cli.io import read_csv

SPLITS = ("train", "val", "test", "ext_test")
REQUIRED_COLUMNS = ("video_id", "study_id", "patient_id", "split", "path", "n_frames", "fps")
MANIFEST_COLUMNS = (
    "video_id", "study_id", "patient_id", "split", "path", "n_frames", "fps", "fps_source",
    "height", "width", "channels", "study_year", "source_hash",
)  # fmt: skip
# De-identified DICOM fields (data/dicom_fields.py) written by preprocess after the schema
# columns; optional (empty for AVI/MP4 inputs and hand-written manifests), never labels.
OPTIONAL_COLUMNS = ("manufacturer", "model", "sex", "age_band", "frame_rate_band")
NON_LABEL_COLUMNS = frozenset(MANIFEST_COLUMNS) | frozenset(OPTIONAL_COLUMNS)
# Categorical (string) columns a layout may carry, e.g. a synthetic archive's true echo view.
# Listed in dataset.json "categorical_columns"; never parsed as binary labels.
CATEGORICAL_COLUMNS = ("view",)
_STR_COLUMNS = ("video_id", "study_id", "patient_id", "split", "path", "fps_source", "source_hash")
_INT_COLUMNS = ("n_frames", "height", "width", "channels")
_MISSING_TOKENS = {"", "nan", "NaN", "NA", "N/A", "None", "none", "null", "NULL"}

# Known spellings (lower case, '-', ' ' and '.' read as '_') -> canonical split name.
_SPLIT_SPELLINGS = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "validate": "val", "dev": "val",
    "test": "test", "testing": "test", "internal_test": "test",
    "ext_test": "ext_test", "ext": "ext_test", "exttest": "ext_test", "external": "ext_test",
    "external_test": "ext_test", "externaltest": "ext_test", "ext_testing": "ext_test",
}  # fmt: skip

MAX_LISTED = 50  # ids / paths named in one error message before "... and N more"
ALLOW_FAILED_ENV = "ECHOCLR_ALLOW_FAILED_DATASET"  # set by `echoclr --allow-failed-dataset`


# --------------------------------------------------------------------------- dataset status
def dataset_json(data_dir: Path) -> dict:
    """``DATA/dataset.json`` as a dict ({} when absent or unreadable)."""
    try:
        d = json.loads((Path(data_dir) / "dataset.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def is_legacy(data_dir: Path) -> bool:
    """Previous format: an id map next to the manifest, or the id salt in dataset.json."""
    data_dir = Path(data_dir)
    if (data_dir / "id_map.csv").exists():
        return True
    cfg = dataset_json(data_dir).get("config")
    return isinstance(cfg, dict) and "salt" in cfg


def migrate_command(data_dir: Path) -> str:
    return f"echoclr preprocess --migrate {data_dir}"


def dataset_status(data_dir: Path) -> tuple[str, str | None]:
    """(status, reason): ok | failed | running (preprocess did not finish) | legacy (previous
    format) | unknown (no dataset.json, e.g. a hand-written manifest: accepted)."""
    if is_legacy(data_dir):
        return "legacy", "a dataset of the previous format (its id salt and id map are public)"
    meta = dataset_json(data_dir)
    if not meta:
        return "unknown", None
    return str(meta.get("status", "ok")), meta.get("reason")


def check_dataset_status(data_dir: Path, allow_failed: bool | None = None) -> None:
    """Refuse a failed, unfinished or previous-format dataset, naming the reason. ``allow_failed``
    (default: the ECHOCLR_ALLOW_FAILED_DATASET environment variable, set by the CLI's
    ``--allow-failed-dataset``) accepts a failed or unfinished one; a previous-format one must be
    converted."""
    status, reason = dataset_status(data_dir)
    if status == "legacy":
        raise UserError(f"{data_dir} is {reason}",
                        fix=f"convert it with `{migrate_command(data_dir)}`")  # fmt: skip
    if allow_failed is None:
        allow_failed = os.environ.get(ALLOW_FAILED_ENV, "") not in ("", "0")
    if status in ("failed", "running") and not allow_failed:
        what = "failed" if status == "failed" else "is unfinished"
        raise UserError(
            f"dataset {data_dir} {what}: {reason}",
            fix="fix the input and re-run `echoclr preprocess`, or use it anyway with "
            "`echoclr --allow-failed-dataset ...`",
        )


def dataset_frame_size(data_dir: Path) -> int | None:
    """The frame size a dataset was written at (dataset.json ``size``); None when it does not
    say (no dataset yet, or one made without the record)."""
    size = dataset_json(data_dir).get("size")
    try:
        return int(size) if size is not None else None
    except (TypeError, ValueError):
        return None


def check_frame_size(data_dir: Path, cfg) -> None:
    """Refuse a dataset whose frame size (dataset.json ``size``) differs from ``cfg``'s
    ``preprocess.size``, naming both. The CLI gives every command the dataset's size and calls
    this only for a size the user set (the models are trained and evaluated at one size)."""
    size = dataset_frame_size(data_dir)
    want = int(cfg.preprocess.size)
    if size is not None and size != want:
        raise UserError(
            f"dataset {data_dir} has {size} px frames but preprocess.size is set to {want} px",
            fix=f"drop the preprocess.size setting (commands take the frame size from the "
            f"dataset), or re-run `echoclr preprocess --size {want}` into another --output",
        )


def normalise_split(values: Iterable[object], source: str = "manifest") -> list[str]:
    """Map split spellings (``TRAIN``, ``valid``, ``external`` ...) to train|val|test|ext_test.

    Unknown values are refused with the allowed set, naming every unknown spelling found.
    """
    out, unknown = [], set()
    for v in values:
        key = str(v).strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
        canon = _SPLIT_SPELLINGS.get(key)
        if canon is None:
            unknown.add(str(v))
        out.append(canon)
    if unknown:
        raise UserError(
            f"{source}: unknown split value(s) {sorted(unknown)}; allowed: {', '.join(SPLITS)} "
            "(also accepted: TRAIN/Training, valid/validation/VAL, external/ext-test)",
            fix="rename the split values in the file",
        )
    return out


def _listing(items: Sequence[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def check_leakage(df: pd.DataFrame, source: str = "manifest") -> None:
    """Raise UserError when a patient_id or study_id occurs in more than one split (naming them)."""
    problems = []
    for col in ("patient_id", "study_id"):
        if col not in df.columns or "split" not in df.columns or df.empty:
            continue
        n_splits = df.groupby(col, sort=True)["split"].nunique()
        leaked = n_splits[n_splits > 1]
        if len(leaked):
            per_id = df[df[col].isin(leaked.index)].groupby(col)["split"].unique()
            named = [f"{i} ({'/'.join(sorted(map(str, s)))})" for i, s in per_id.items()]
            problems.append(f"{len(leaked)} {col}(s) in more than one split: {_listing(named)}")
    if problems:
        raise UserError(
            f"{source}: leakage between splits: " + "; ".join(problems),
            fix="assign each patient to exactly one split (re-run `echoclr preprocess`, which "
            "splits by patient)",
        )


def label_columns(df: pd.DataFrame) -> list[str]:
    """Binary label columns of a manifest (from dataset.json when loaded, else non-schema columns)."""
    cols = df.attrs.get("label_columns")
    if cols is not None:
        return [c for c in cols if c in df.columns]
    cat = set(categorical_columns(df))
    return [c for c in df.columns if c not in NON_LABEL_COLUMNS and c not in cat]


def categorical_columns(df: pd.DataFrame) -> list[str]:
    """Categorical (string) label columns of a manifest, e.g. ``view`` (from dataset.json when
    loaded, else the known names present)."""
    cols = df.attrs.get("categorical_columns")
    if cols is not None:
        return [c for c in cols if c in df.columns]
    return [c for c in CATEGORICAL_COLUMNS if c in df.columns]


def parse_labels(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Strings/numbers -> float 0/1/NaN. Returns (values, bad) where bad marks non-0/1 entries.

    Empty / NaN / 'None' tokens are unknown (NaN, not bad); anything else that is not 0 or 1
    (2, -1, 0.5, 'yes') is bad and becomes NaN too.
    """
    raw = series.astype("string").str.strip()
    missing = raw.isna() | raw.isin(_MISSING_TOKENS)
    num = pd.to_numeric(raw.where(~missing), errors="coerce").astype(float)
    ok = num.isin([0.0, 1.0])
    bad = ~missing & ~ok
    values = num.where(ok)
    return values, bad


def load_manifest(
    data_dir: Path,
    task: str | None = None,
    check_files: bool = True,
    require_splits: Sequence[str] = (),
    allow_failed: bool | None = None,
    cfg=None,
) -> pd.DataFrame:
    """Read and validate ``data_dir/manifest.csv``.

    Checks: required columns, unique video ids, split spellings (normalised; unknown refused),
    patient/study leakage (refused, naming ids), label values (non-0/1 -> NaN, listed in
    ``df.attrs["excluded"]`` with reason ``bad_label`` and warned), every file present (all
    missing ones named in one message; only ``os.path.exists``, no file is opened).
    With ``task``: the label column must exist; rows whose label is unknown or bad are excluded
    (kept in ``attrs["excluded"]``). ``require_splits``: these splits must be non-empty.
    ``df.attrs`` also holds ``label_columns`` and ``data_dir``. A failed / unfinished /
    previous-format dataset is refused first (:func:`check_dataset_status`, ``allow_failed``);
    with ``cfg``, a frame size other than ``cfg.preprocess.size`` is refused
    (:func:`check_frame_size`).
    """
    data_dir = Path(data_dir)
    check_dataset_status(data_dir, allow_failed)
    if cfg is not None:
        check_frame_size(data_dir, cfg)
    path = data_dir / "manifest.csv"
    if not path.exists():
        status, reason = dataset_status(data_dir)
        why = f" (dataset.json says {status}: {reason})" if status == "failed" else ""
        raise UserError(
            f"no manifest.csv in {data_dir}{why}",
            fix="run `echoclr preprocess --output DIR` first, or point --data at a dataset dir",
        )
    try:
        df = read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path}: not a readable CSV ({e})", fix="re-run `echoclr preprocess`"
        ) from None
    df = public_vendor_columns(df)  # older or hand-written manifests: the allow-list too
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        raise UserError(
            f"{path}: missing column(s) {missing_cols}; has {list(df.columns)}",
            fix="re-run `echoclr preprocess` to write a complete manifest",
        )
    if df.empty:
        raise UserError(f"{path}: no videos", fix="check `skipped.csv` in the same dir for why")
    for col in _STR_COLUMNS:
        if col in df.columns:
            df[col] = df[col].str.strip()
    dup = df["video_id"][df["video_id"].duplicated()].unique().tolist()
    if dup:
        raise UserError(f"{path}: duplicate video_id(s): {_listing(dup)}", fix="re-run preprocess")
    df["split"] = normalise_split(df["split"], source=str(path))
    for col in _INT_COLUMNS + ("fps",):
        if col in df.columns:
            vals = pd.to_numeric(df[col], errors="coerce")
            if vals.isna().any():
                rows = df.loc[vals.isna(), "video_id"].tolist()
                raise UserError(
                    f"{path}: column '{col}' is empty or not numeric for video(s) {_listing(rows)}",
                    fix="re-run `echoclr preprocess`",
                )
            df[col] = vals.astype(int) if col in _INT_COLUMNS else vals.astype(float)
    if "study_year" in df.columns:
        df["study_year"] = pd.to_numeric(df["study_year"], errors="coerce").astype("Int64")

    categorical = _declared_categorical(data_dir, df)
    labels = [c for c in _declared_labels(data_dir, df) if c not in categorical]
    for col in categorical:
        df[col] = df[col].str.strip()
    excluded = []
    for col in labels:
        values, bad = parse_labels(df[col])
        for vid, val in zip(df.loc[bad, "video_id"], df.loc[bad, col], strict=True):
            excluded.append({"video_id": vid, "reason": "bad_label", "detail": f"{col}={val!r}"})
        df[col] = values
    if excluded:
        warnings.warn(
            f"{path}: {len(excluded)} label value(s) not 0/1 were set to unknown (bad_label): "
            + _listing([f"{e['video_id']} {e['detail']}" for e in excluded]),
            stacklevel=2,
        )
    check_leakage(df, source=str(path))

    if task is not None:
        if task not in labels:
            raise UserError(
                f"{path}: no label column '{task}'; label columns: {labels or 'none'}",
                fix="pick --task from the label columns, or add labels with "
                "`echoclr preprocess --labels CSV`",
            )
        unknown = df[task].isna()
        excluded += [
            {"video_id": v, "reason": "unknown_label", "detail": f"{task} is empty"}
            for v in df.loc[unknown, "video_id"]
        ]
        df = df.loc[~unknown].reset_index(drop=True)
        df[task] = df[task].astype(np.float32)
    for split in require_splits:
        if not (df["split"] == split).any():
            what = f" with a known '{task}' label" if task else ""
            raise UserError(
                f"{path}: split '{split}' has no videos{what}",
                fix="re-run `echoclr preprocess` with other split fractions or check the labels",
            )
    if check_files:
        _check_files(data_dir, df)
    df.attrs["label_columns"] = labels
    df.attrs["categorical_columns"] = categorical
    df.attrs["excluded"] = excluded
    df.attrs["data_dir"] = str(data_dir)
    return df


def _declared_labels(data_dir: Path, df: pd.DataFrame) -> list[str]:
    info = data_dir / "dataset.json"
    if info.exists():
        try:
            cols = json.loads(info.read_text()).get("label_columns")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            cols = None
        if isinstance(cols, list):
            absent = [c for c in cols if c not in df.columns]
            if absent:
                raise UserError(
                    f"{info} lists label column(s) {absent} that manifest.csv lacks",
                    fix="re-run `echoclr preprocess` so both files match",
                )
            return [str(c) for c in cols]
    return [c for c in df.columns if c not in NON_LABEL_COLUMNS]


def _declared_categorical(data_dir: Path, df: pd.DataFrame) -> list[str]:
    """dataset.json "categorical_columns" (those in the manifest), else the known names."""
    info = dataset_json(data_dir)
    cols = info.get("categorical_columns")
    if isinstance(cols, list):
        return [str(c) for c in cols if c in df.columns]
    if isinstance(info.get("label_columns"), list):  # dataset.json lists them all: none here
        return []
    return [c for c in CATEGORICAL_COLUMNS if c in df.columns]


def _check_files(data_dir: Path, df: pd.DataFrame) -> None:
    base = str(data_dir)
    missing = [p for p in df["path"] if not os.path.exists(os.path.join(base, p))]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(df)} video file(s) listed in {data_dir / 'manifest.csv'} "
            f"are missing: {_listing(missing)}",
            fix="restore the files or re-run `echoclr preprocess` into this dir",
        )


# --------------------------------------------------------------------------- splits
def assign_splits(
    patients: pd.DataFrame,
    fractions: tuple[float, float, float],
    seed: int,
    strata: Sequence[str] = (),
) -> pd.Series:
    """Patient-level stratified train/val/test assignment.

    ``patients``: one row per patient (index = patient_id) with the stratification columns
    (0/1/NaN). Patients are ordered by stratum (shuffled within) and dealt out with a
    largest-remainder sequence, so every stratum and the whole set get the requested shares
    (within one patient per stratum). Returns a Series patient_id -> split.
    """
    total = float(sum(fractions))
    if total <= 0 or any(f < 0 for f in fractions):
        raise UserError(
            f"preprocess.split {fractions} must be three non-negative fractions",
            fix="e.g. --set preprocess.split=[0.75,0.1,0.15]",
        )
    shares = np.asarray(fractions, dtype=float) / total
    rng = np.random.default_rng(seed)
    if len(patients) == 0:
        return pd.Series([], dtype=str, index=patients.index)
    keys = np.zeros(len(patients), dtype=np.int64)
    for col in strata:
        v = patients[col].to_numpy(dtype=float)
        keys = keys * 3 + np.where(np.isnan(v), 2, np.nan_to_num(v).clip(0, 1).astype(np.int64))
    order = np.lexsort((rng.permutation(len(patients)), keys))
    names = np.array(["train", "val", "test"])
    out = np.empty(len(patients), dtype=object)
    counts = np.zeros(3)
    for rank, pos in enumerate(order):
        # Largest remainder: the split furthest behind its target share takes the next patient.
        deficit = shares * (rank + 1) - counts
        k = int(np.argmax(deficit))
        counts[k] += 1
        out[pos] = names[k]
    return pd.Series(out, index=patients.index, dtype=str)
