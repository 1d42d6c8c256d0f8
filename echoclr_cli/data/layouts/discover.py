"""Dataset layouts: turn an input dir into an :class:`Inventory` of files with what the layout
already knows (ids, split, labels, year). Layouts: synth (videos.csv + labels.csv), echoclr
(published split CSVs), echonet (FileList.csv), and a plain dicom/video tree (+ ``--labels``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from echoclr_cli.data.label_file import LabelRow, read_label_file
from echoclr_cli.data.label_issues import label_issue
from echoclr_cli.data.labels import (
    apply_label_map,
    as_label,
    auto_binary,
    external_flags,
    lvh_label,
    read_binary,
    read_table,
    view_keep,
    years_column,
)
from echoclr_cli.data.layouts.base import (
    Inventory,
    Item,
    _kind,
    _not_media,
    _walk,
    drop_unreadable,
)
from echoclr_cli.data.layouts.public import discover_echonet_lvh, discover_mimic
from echoclr_cli.data.manifest import CATEGORICAL_COLUMNS, normalise_split
from echoclr_cli.data.presets import build_rules
from echoclr_cli.data.privacy import hash_id
from echoclr_cli.data.rules import MISSING
from echoclr_cli.errors import UserError


def detect_layout(root: Path) -> str:
    """synth (labels.csv + videos.csv), echonet (FileList.csv + Videos/), echoclr (videos/ +
    split CSVs), echonet-lvh (MeasurementsList.csv + Batch*/), mimic-echo (files/pNN/... or
    echo-record-list.csv), else a plain dicom/video tree."""
    if (root / "synth.json").exists() or (
        (root / "labels.csv").exists() and (root / "videos.csv").exists()
    ):
        return "synth"
    if (root / "FileList.csv").exists() and (root / "Videos").is_dir():
        return "echonet"
    if (root / "videos").is_dir() and any(
        (root / f"{s}.csv").exists() for s in ("train", "val", "test", "ext_test")
    ):
        return "echoclr"
    if (root / "MeasurementsList.csv").exists() and any(root.glob("Batch*/")):
        return "echonet-lvh"
    if (root / "files").is_dir() and (
        (root / "echo-record-list.csv").exists()
        or any(re.fullmatch(r"p\d\d", d.name) for d in (root / "files").iterdir() if d.is_dir())
    ):
        return "mimic-echo"
    return "dicom"


def _add_unlisted(inv: Inventory, exclude: Iterable[Path], index: str, follow: bool) -> None:
    """Skip rows (``unlisted``) for every file under the root that the layout's index does not
    name (used files, skipped rows and the index files themselves are named), plus the walk's
    own rows (hidden, links, not regular files) for paths the index does not name."""
    root = inv.root
    used = {os.path.realpath(it.file) for it in inv.items}
    used |= {os.path.realpath(root / s["file"]) for s in inv.skipped}
    used |= {os.path.realpath(root / n) for n in INDEX_FILES}
    files, hidden = _walk(root, exclude, follow)
    inv.skipped.extend(h for h in hidden if os.path.realpath(root / h["file"]) not in used)
    for f in files:
        if os.path.realpath(f) in used:
            continue
        why = _not_media(f)
        inv.skipped.append({"file": f.relative_to(root).as_posix(),
                            "reason": "not_media" if why else "unlisted",
                            "detail": why or f"not named by {index}"})  # fmt: skip


def path_ids(rel: str) -> tuple[str, str]:
    """Ids from the folder layout PATIENT/STUDY/file (study = parent, patient = grandparent)."""
    parts = Path(rel).parts
    if len(parts) >= 3:
        return parts[-2], parts[-3]
    if len(parts) == 2:
        return parts[0], parts[0]
    return Path(rel).stem, Path(rel).stem


INDEX_FILES = (
    "synth.json", "labels.csv", "videos.csv", "FileList.csv", "VolumeTracings.csv",
    "train.csv", "val.csv", "test.csv", "ext_test.csv", "echo_labels.csv",
    "MeasurementsList.csv", "echo-record-list.csv", "echo-study-list.csv",
)  # fmt: skip


def discover(
    cfg,
    root: Path,
    layout: str = "auto",
    labels: Path | None = None,
    exclude: Iterable[Path] = (),
    external_root: Path | None = None,
    salt: str = "",
) -> Inventory:
    """Inventory of an input dir. ``cfg`` is the ``preprocess`` config section.

    ``labels`` (--labels) works under every layout: its columns are added to the layout's own
    (a column in both is refused). ``external_root``: a separate input dir whose files all go to
    ext_test. ``salt``: the dataset's id salt (label rows are matched by hashed id).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"input dir not found: {root}", fix="check --input")
    if labels is not None and not Path(labels).exists():  # a FIFO or folder: read_bounded says so
        raise UserError(f"label file not found: {labels}", fix="check --labels")
    exclude = list(exclude) + ([Path(labels)] if labels else [])
    chosen = detect_layout(root) if layout == "auto" else layout
    rules = build_rules(list(cfg.label_rules), list(cfg.label_presets))  # malformed: one line now
    if rules and labels is None and chosen != "echonet-lvh":
        raise UserError(
            f"label rules need a measurement table: the {chosen} layout has none",
            fix="pass --labels TABLE (wide, or long: one row per id and measurement)",
        )
    # With --labels, the view / external columns are read from that file.
    lcfg = cfg.model_copy(update={"view_column": None, "external_column": None}) if labels else cfg
    if chosen == "synth":
        inv = _discover_synth(lcfg, root, salt)
    elif chosen == "echoclr":
        inv = _discover_echoclr(lcfg, root, salt)
    elif chosen == "echonet":
        inv = _discover_echonet(lcfg, root, salt)
    elif chosen == "echonet-lvh":
        inv = discover_echonet_lvh(lcfg, root, salt, rules_here=labels is None)
    elif chosen == "mimic-echo":
        inv = discover_mimic(cfg, root, exclude, labels is not None)
    else:
        inv = _discover_tree(cfg, root, chosen, labels is not None, exclude)
    follow = bool(getattr(cfg, "follow_external_links", False))
    drop_unreadable(inv, root, follow)
    if chosen in ("synth", "echoclr", "echonet", "echonet-lvh"):
        index = {"synth": "videos.csv", "echoclr": "the split CSVs", "echonet": "FileList.csv",
                 "echonet-lvh": "MeasurementsList.csv"}[chosen]  # fmt: skip
        _add_unlisted(inv, exclude, index, follow)
    if labels is not None:
        _add_label_file(inv, cfg, Path(labels), salt)
    if external_root is not None:
        if not Path(external_root).is_dir():
            raise UserError(f"external input dir not found: {external_root}",
                            fix="check preprocess.external_input")  # fmt: skip
        ext = _discover_tree(cfg.model_copy(update={"view_column": None, "external_column": None}),
                             Path(external_root), "dicom", True, exclude)  # fmt: skip
        drop_unreadable(ext, Path(external_root), follow)
        for it in ext.items:
            it.rel = f"external/{it.rel}"
            it.meta["split"] = "ext_test"
        for rec in ext.skipped:
            rec["file"] = f"external/{rec['file']}"
        inv.items.extend(ext.items)
        inv.skipped.extend(ext.skipped)
    return inv


def _add_label_file(inv: Inventory, cfg, path: Path, salt: str) -> None:
    lf = read_label_file(cfg, path, salt, inv.aliases)
    both = sorted(set(lf.label_columns) & set(inv.label_columns))
    if both:
        raise UserError(
            f"{path}: label column(s) {both} also come from the {inv.layout} layout's own files",
            fix="rename them in the label file (or map them with preprocess.label_map)",
        )
    inv.label_columns += lf.label_columns
    inv.table, inv.key, inv.view_excluded = lf.table, lf.key, lf.view_excluded
    inv.label_key = lf.key_info
    inv.label_issues += lf.issues
    inv.label_rows += lf.rows


def _duplicates(ids: pd.Series, source: str, key: str, lines: pd.Series, salt: str) -> list[dict]:
    dup = ids.duplicated(keep="first") & ids.ne("")
    first = {}
    for i, v in ids.items():
        first.setdefault(v, int(lines.loc[i]))
    return [label_issue("duplicate_id", source, int(lines.loc[i]), None, None, ids.loc[i],
                        f"same id as line {first[ids.loc[i]]}", hash_id(salt, key, ids.loc[i]))
            for i in ids.index[dup]]  # fmt: skip


def _discover_synth(cfg, root: Path, salt: str) -> Inventory:
    for name in ("labels.csv", "videos.csv"):
        if not (root / name).exists():
            raise UserError(f"{root}: synth layout needs {name}", fix="re-run `echoclr synth`")
    lab = read_table(root / "labels.csv")
    vids = read_table(root / "videos.csv")
    for col, df, name in (("study_id", lab, "labels.csv"), ("file", vids, "videos.csv"),
                          ("study_id", vids, "videos.csv")):  # fmt: skip
        if col not in df.columns:
            raise UserError(f"{root / name}: no column '{col}'", fix="re-run `echoclr synth`")
    default = {c: read_binary(lab[c]) for c in ("as", "lvh") if c in lab.columns}
    lbl, issues = apply_label_map(lab, cfg.label_map, default, "labels.csv")
    lines = pd.Series(lab.index + 2, index=lab.index)
    issues += _duplicates(lab["study_id"], "labels.csv", "study", lines, salt)
    year = years_column(lab)
    ext = external_flags(lab, cfg, year)
    if "site" in lab.columns:
        ext |= lab["site"].str.lower().eq("external")
    keep_view = (
        view_keep(lab, cfg, str(root / "labels.csv")) if cfg.view_column in lab.columns else None
    )
    per_study = {}
    for i, sid in enumerate(lab["study_id"]):
        meta = {c: float(lbl[c].iloc[i]) for c in lbl.columns}
        meta["external"] = bool(ext.iloc[i])
        meta["study_year"] = None if year is None or pd.isna(year.iloc[i]) else int(year.iloc[i])
        meta["view_ok"] = True if keep_view is None else bool(keep_view.iloc[i])
        pid = lab["patient_id"].iloc[i] if "patient_id" in lab.columns else sid
        per_study.setdefault(sid, (meta, pid))
    vkeep = (
        view_keep(vids, cfg, str(root / "videos.csv")) if cfg.view_column in vids.columns else None
    )
    if cfg.view_column and keep_view is None and vkeep is None:
        view_keep(lab, cfg, str(root / "labels.csv"))  # raises naming the column
    inv = Inventory("synth", root, [], list(lbl.columns))
    inv.label_issues += issues
    # a multi-view archive's true view: a categorical (string) manifest column, never binary
    inv.categorical_columns = [c for c in CATEGORICAL_COLUMNS if c in vids.columns]
    if lbl.columns.size:
        inv.label_rows += [LabelRow("labels.csv", int(lines.loc[i]), "study",
                                    hash_id(salt, "study", sid), sid)
                           for i, sid in lab["study_id"].items()]  # fmt: skip
    for i, row in vids.iterrows():
        meta, pid = per_study.get(row["study_id"], ({}, None))
        meta = dict(meta)
        for c in inv.categorical_columns:
            meta[c] = "" if pd.isna(row[c]) else str(row[c]).strip()
        pid = row.get("patient_id") or pid or row["study_id"]
        inv.known_ids.add(hash_id(salt, "study", row["study_id"]))
        path = root / row["file"]
        if not path.exists():
            inv.skipped.append(
                {"file": row["file"], "reason": "missing_file", "detail": "listed in videos.csv"}
            )
            continue
        if not meta.pop("view_ok", True) or (vkeep is not None and not bool(vkeep.loc[i])):
            inv.skipped.append(
                {"file": row["file"], "reason": "view_filter", "detail": f"{cfg.view_column}"}
            )
            continue
        inv.items.append(Item(path, row["file"], _kind(path), row["study_id"], pid, meta))
    return inv


ECHOCLR_COLUMNS = ["plax_prob", "fpath", "acc_num", "av_stenosis", "video_num"]


def _read_echoclr_csv(path: Path) -> pd.DataFrame:
    """A split CSV of the published layout: with a header (maybe plus a pandas index column)
    or without one (columns by position)."""
    df = read_table(path)
    if "fpath" not in df.columns:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
        if raw.shape[1] == len(ECHOCLR_COLUMNS) + 1:
            raw = raw.iloc[:, 1:]
        if raw.shape[1] != len(ECHOCLR_COLUMNS):
            raise UserError(
                f"{path}: expected columns {ECHOCLR_COLUMNS} (by name or position), got "
                f"{raw.shape[1]} columns",
                fix="use the published EchoCLR CSV format or --layout dicom with --labels",
            )
        raw.columns = ECHOCLR_COLUMNS
        df = raw.apply(lambda s: s.str.strip())
        df["_line"] = df.index + 1
    else:
        df["_line"] = df.index + 2
    df = df.loc[:, [c for c in df.columns if c and not c.startswith("Unnamed")]]
    missing = [c for c in ("fpath", "acc_num") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}", fix="check the split CSV")
    return df


def _find_video(videos: Path, fpath: str) -> Path | None:
    name = Path(fpath.replace("\\", "/")).name
    for cand in (name, name + ".avi", Path(name).stem + ".avi"):
        p = videos / cand
        if p.exists() and not p.is_dir():  # a FIFO or device: found, then not_regular_file
            return p
    return None


def _discover_echoclr(cfg, root: Path, salt: str) -> Inventory:
    videos = root / "videos"
    frames = []
    for split in ("train", "val", "test", "ext_test"):
        p = root / f"{split}.csv"
        if p.exists():
            df = _read_echoclr_csv(p)
            df["split"] = split
            df["_csv"] = p.name
            frames.append(df)
    if not frames:
        raise UserError(
            f"{root}: the EchoCLR layout needs train.csv / val.csv / test.csv / ext_test.csv",
            fix="add the split CSVs or use --layout dicom with --labels",
        )
    rows = pd.concat(frames, ignore_index=True)
    issues: list[dict] = []
    lab_rows: list[LabelRow] = []
    lvh = None
    if (root / "echo_labels.csv").exists():
        lab = read_table(root / "echo_labels.csv")
        if {"Accession Number", "LVH_LVMi"} - set(lab.columns):
            raise UserError(
                f"{root / 'echo_labels.csv'}: needs columns 'Accession Number' and 'LVH_LVMi'",
                fix="check the label file",
            )
        lines = pd.Series(lab.index + 2, index=lab.index)
        issues += _duplicates(lab["Accession Number"], "echo_labels.csv", "study", lines, salt)
        lab_rows = [LabelRow("echo_labels.csv", int(lines.loc[i]), "study",
                             hash_id(salt, "study", a), a)
                    for i, a in lab["Accession Number"].items()]  # fmt: skip
        lab = lab.drop_duplicates("Accession Number", keep="first")
        rows = rows.merge(lab, how="left", left_on="acc_num", right_on="Accession Number")
        lvh = True
    default = {}
    if "av_stenosis" in rows.columns:
        default["as"] = as_label(rows["av_stenosis"])
    if lvh:
        default["lvh"] = lvh_label(rows["LVH_LVMi"])
    srcmap = {"as": "av_stenosis", "lvh": "LVH_LVMi"}
    parts = []
    for csv, part in rows.groupby("_csv", sort=False):
        sub = {k: (v.loc[part.index], b.loc[part.index]) for k, (v, b) in default.items()}
        got, found = apply_label_map(part, cfg.label_map, sub, csv, part["_line"], srcmap)
        parts.append(got)
        issues += found
    lbl = pd.concat(parts).reindex(rows.index)
    keep = view_keep(rows, cfg, str(root))
    ext = (
        external_flags(rows, cfg, years_column(rows))
        if cfg.external_column or cfg.external_after
        else None
    )
    inv = Inventory("echoclr", root, [], list(lbl.columns), label_issues=issues,
                    label_rows=lab_rows)  # fmt: skip
    for i, row in rows.iterrows():
        inv.known_ids.add(hash_id(salt, "study", row["acc_num"]))
        path = _find_video(videos, row["fpath"])
        where = f"{row['_csv']}: {row['fpath']}"
        if path is None:
            inv.skipped.append(
                {"file": where, "reason": "missing_file", "detail": "not in videos/"}
            )
            continue
        rel = path.relative_to(root).as_posix()
        if not bool(keep.loc[i]):
            inv.skipped.append({"file": rel, "reason": "view_filter",
                                "detail": f"{cfg.view_column}={row[cfg.view_column]!r}"})  # fmt: skip
            continue
        meta = {c: float(lbl.at[i, c]) for c in lbl.columns}
        meta["split"] = "ext_test" if ext is not None and ext.loc[i] else row["split"]
        inv.items.append(
            Item(path, rel, "video", row["acc_num"], row["acc_num"], meta, native=True)
        )
    return inv


def _discover_echonet(cfg, root: Path, salt: str) -> Inventory:
    fl = read_table(root / "FileList.csv")
    if "FileName" not in fl.columns:
        raise UserError(f"{root / 'FileList.csv'}: no FileName column", fix="check the file")
    default, dropped = {}, []
    for col, thr in cfg.label_threshold.items():
        if col not in fl.columns:
            raise UserError(
                f"preprocess.label_threshold names '{col}', not a FileList.csv column "
                f"({list(fl.columns)})",
                fix="use e.g. --set preprocess.label_threshold.EF=50",
            )
        num = pd.to_numeric(fl[col], errors="coerce")
        missing = fl[col].str.lower().isin(MISSING)
        default[col.lower()] = ((num < thr).astype(float).where(num.notna()), ~missing & num.isna())
    srcmap = {c.lower(): c for c in cfg.label_threshold}
    if not cfg.label_threshold:
        skip = {"FileName", "Split", "FPS", "NumberOfFrames", "FrameHeight", "FrameWidth"}
        auto, dropped = auto_binary(fl, skip, "FileList.csv")
        default.update(auto)
    lbl, issues = apply_label_map(fl, cfg.label_map, default, "FileList.csv", None, srcmap)
    lines = pd.Series(fl.index + 2, index=fl.index)
    issues += _duplicates(fl["FileName"], "FileList.csv", "study", lines, salt)
    splits = (
        normalise_split(fl["Split"], str(root / "FileList.csv")) if "Split" in fl.columns else None
    )
    keep = view_keep(fl, cfg, str(root / "FileList.csv"))
    inv = Inventory("echonet", root, [], list(lbl.columns), label_issues=issues + dropped)
    videos = root / "Videos"
    for i, row in fl.iterrows():
        path = _find_video(videos, row["FileName"])
        if path is None:
            inv.skipped.append({"file": f"Videos/{row['FileName']}", "reason": "missing_file",
                                "detail": "listed in FileList.csv"})  # fmt: skip
            continue
        if not bool(keep.loc[i]):
            inv.skipped.append({"file": path.relative_to(root).as_posix(), "reason": "view_filter",
                                "detail": str(cfg.view_column)})  # fmt: skip
            continue
        meta = {c: float(lbl.at[i, c]) for c in lbl.columns}
        if splits is not None:
            meta["split"] = splits[i]
        sid = (
            Path(row["FileName"]).stem
            if row["FileName"].lower().endswith(".avi")
            else row["FileName"]
        )
        inv.items.append(Item(path, path.relative_to(root).as_posix(), "video", sid, sid, meta))
    return inv


def _discover_tree(cfg, root: Path, layout: str, has_labels: bool, exclude) -> Inventory:
    files, skipped = _walk(root, exclude, bool(getattr(cfg, "follow_external_links", False)))
    items = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        kind = _kind(f)
        why = _not_media(f)
        if why:
            skipped.append({"file": rel, "reason": "not_media", "detail": why})
            continue
        if layout == "video" and kind != "video":
            skipped.append({"file": rel, "reason": "not_video",
                            "detail": "not a video extension (--layout video)"})  # fmt: skip
            continue
        sid, pid = path_ids(rel)
        # Videos carry no ids: take them from the folders. DICOMs: header first, folders if empty.
        items.append(Item(f, rel, kind, sid if kind == "video" else None,
                          pid if kind == "video" else None, {"path_ids": (sid, pid)}))  # fmt: skip
    inv = Inventory(layout, root, items, [], skipped=skipped)
    if not has_labels and (cfg.view_column or cfg.external_column):
        raise UserError(
            "preprocess.view_column / external_column need a label file for a plain tree",
            fix="pass --labels CSV",
        )
    return inv
