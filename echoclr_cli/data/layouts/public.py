"""Public echo datasets as layouts: MIMIC-IV-ECHO (``files/pNN/pSUBJECT/sSTUDY/*.dcm`` +
its record and study lists) and EchoNet-LVH (``Batch*/`` AVIs + ``MeasurementsList.csv``).
Called by :func:`echoclr_cli.data.layouts.discover.discover`."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from echoclr_cli.data.label_file import add_rule_labels, pivot_long, table_summary
from echoclr_cli.data.label_issues import SUMMARY_KINDS, label_issue
from echoclr_cli.data.labels import apply_label_map, read_table, view_keep
from echoclr_cli.data.layouts.base import VIDEO_EXTS, Inventory, Item, _not_media, _walk
from echoclr_cli.data.manifest import normalise_split
from echoclr_cli.data.presets import build_rules
from echoclr_cli.data.privacy import hash_id
from echoclr_cli.data.rules import MISSING
from echoclr_cli.errors import UserError

LVH_SOURCE = "MeasurementsList.csv"


def discover_echonet_lvh(cfg, root: Path, salt: str, rules_here: bool) -> Inventory:
    """EchoNet-LVH: ``Batch*/<HashedFileName>.avi`` + ``MeasurementsList.csv`` in long form
    (HashedFileName, Calc, CalcValue, Frame, X1, X2, Y1, Y2, ..., split). Each video is its own
    study and patient (the dataset gives no other id); the split is the CSV's; labels come from
    label rules over the Calc names (IVSd, LVIDd, LVIDs, LVPWd; CalcValue in cm), e.g.
    ``lvh = IVSd > 1.1 or LVPWd > 1.1``. ``rules_here``: False when --labels carries them."""
    ml = read_table(root / LVH_SOURCE)
    ml = ml.loc[:, [c for c in ml.columns if c and not c.startswith("Unnamed")]]
    miss = [c for c in ("HashedFileName", "Calc", "CalcValue") if c not in ml.columns]
    if miss:
        raise UserError(f"{root / LVH_SOURCE}: no column(s) {miss}; columns: {list(ml.columns)}",
                        fix="use the EchoNet-LVH MeasurementsList.csv as downloaded")  # fmt: skip
    rules = build_rules(list(cfg.label_rules), list(cfg.label_presets)) if rules_here else []
    label_map = cfg.label_map if rules_here else {}
    needed = {c for r in rules for c in r.columns} | {
        re.split(r"==|!=|>=|<=|>|<", e)[0].strip() for e in label_map.values()
    }
    lines = pd.Series(ml.index + 2, index=ml.index)
    summary = {"source": LVH_SOURCE, "rows": len(ml), "long": False}
    wide, wl = pivot_long(ml, "HashedFileName", "Calc", "CalcValue", {"split"}, needed,
                          LVH_SOURCE, summary, lines)  # fmt: skip
    lbl, issues = apply_label_map(wide, label_map, {}, LVH_SOURCE, wl)
    lbl, found = add_rule_labels(lbl, wide, rules, LVH_SOURCE, wl)
    issues = [table_summary(summary)] + issues + found
    for rec in issues:
        if rec["kind"] not in SUMMARY_KINDS and rec["line"] is not None:
            hit = wide.index[wl == rec["line"]]
            rec["original_id"] = wide.at[hit[0], "HashedFileName"] if len(hit) else None
            rec["hashed_id"] = hash_id(salt, "study", rec["original_id"] or "")
    splits = normalise_split(wide["split"], str(root / LVH_SOURCE)) if "split" in wide else None
    keep = view_keep(wide, cfg, str(root / LVH_SOURCE))
    videos: dict[str, Path] = {}
    for batch in sorted(d for d in root.glob("Batch*") if d.is_dir()):
        for f in sorted(batch.iterdir()):
            if f.suffix.lower() in VIDEO_EXTS:
                videos.setdefault(f.stem, f)
    inv = Inventory("echonet-lvh", root, [], list(lbl.columns), label_issues=issues)
    for i, row in wide.iterrows():
        name = row["HashedFileName"]
        path = videos.get(Path(name).stem)
        if path is None:
            inv.skipped.append({"file": f"Batch*/{name}.avi", "reason": "missing_file",
                                "detail": f"listed in {LVH_SOURCE}"})  # fmt: skip
            continue
        rel = path.relative_to(root).as_posix()
        if not bool(keep.loc[i]):
            inv.skipped.append({"file": rel, "reason": "view_filter",
                                "detail": str(cfg.view_column)})  # fmt: skip
            continue
        meta = {c: float(lbl.at[i, c]) for c in lbl.columns}
        if splits is not None:
            meta["split"] = splits[i]
        sid = Path(name).stem
        inv.known_ids.add(hash_id(salt, "study", sid))
        inv.items.append(Item(path, rel, "video", sid, sid, meta))
    return inv


_MIMIC_PATH = re.compile(r"files/p\d\d/p(?P<subject>\d+)/s(?P<study>\d+)/(?P=study)_\d+\.dcm")
MIMIC_RECORDS, MIMIC_STUDIES = "echo-record-list.csv", "echo-study-list.csv"


def discover_mimic(cfg, root: Path, exclude, has_labels: bool) -> Inventory:
    """MIMIC-IV-ECHO: ``files/p<NN>/p<subject_id>/s<study_id>/<study_id>_<NNNN>.dcm``; patient
    and study from the path. ``echo-record-list.csv`` (subject_id, study_id,
    acquisition_datetime, dicom_filepath), when present, gives each study's year (its first
    acquisition); listed files not downloaded are counted, not skipped one by one (a partial
    download is the normal case). ``echo-study-list.csv`` with a ``measurement_id`` column lets
    ``--labels`` be keyed by measurement_id (the structured measurements)."""
    files, skipped = _walk(root, exclude, bool(getattr(cfg, "follow_external_links", False)))
    items = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        why = _not_media(f)
        if why:
            if rel not in (MIMIC_RECORDS, MIMIC_STUDIES):
                skipped.append({"file": rel, "reason": "not_media", "detail": why})
            continue
        m = _MIMIC_PATH.fullmatch(rel)
        if not m:
            skipped.append({"file": rel, "reason": "unlisted", "detail": "not in the "
                            "MIMIC-IV-ECHO path convention files/pNN/pSUBJECT/sSTUDY/STUDY_NNNN.dcm"})  # fmt: skip
            continue
        sid, pid = m["study"], m["subject"]
        items.append(Item(f, rel, "dicom", sid, pid, {"path_ids": (sid, pid)}))
    if not has_labels and (cfg.view_column or cfg.external_column):
        raise UserError(
            "preprocess.view_column / external_column need a label file for MIMIC-IV-ECHO",
            fix="pass --labels CSV keyed by study_id",
        )
    inv = Inventory("mimic-echo", root, items, [], skipped=skipped)
    have = {it.rel for it in items}
    years: dict[str, int] = {}
    if (root / MIMIC_RECORDS).exists():
        rec = read_table(root / MIMIC_RECORDS)
        need = [c for c in ("study_id", "dicom_filepath") if c not in rec.columns]
        if need:
            raise UserError(f"{root / MIMIC_RECORDS}: no column(s) {need}; columns: "
                            f"{list(rec.columns)}", fix="use the record list as downloaded")  # fmt: skip
        if "acquisition_datetime" in rec.columns:
            yr = pd.to_datetime(rec["acquisition_datetime"], errors="coerce").dt.year
            years = {str(k): int(v) for k, v in yr.groupby(rec["study_id"]).min().dropna().items()}
        listed = set(rec["dicom_filepath"].str.lstrip("/"))
        counts = {"source": MIMIC_RECORDS, "rows": len(rec), "long": False,
                  "listed_not_downloaded": len(listed - have),
                  "downloaded_not_listed": len(have - listed),
                  "studies_with_time": len(years)}  # fmt: skip
        note = label_issue("table", MIMIC_RECORDS, None, None, None,
                           detail=f"{counts['listed_not_downloaded']} listed file(s) not "
                           f"downloaded, {counts['downloaded_not_listed']} file(s) not listed; "
                           f"acquisition year of {len(years)} studies")  # fmt: skip
        note["counts"] = counts
        inv.label_issues.append(note)
    if (root / MIMIC_STUDIES).exists():
        st = read_table(root / MIMIC_STUDIES)
        if {"study_id", "measurement_id"} <= set(st.columns):
            alias: dict[str, list[str]] = {}
            for mid, sid in zip(st["measurement_id"], st["study_id"], strict=True):
                if mid.lower() not in MISSING:
                    alias.setdefault(mid, []).append(sid)
            inv.aliases = ("measurement_id", alias)
        if "study_datetime" in st.columns:
            yr = pd.to_datetime(st["study_datetime"], errors="coerce").dt.year
            for k, v in zip(st["study_id"], yr, strict=True):
                if not pd.isna(v):
                    years.setdefault(k, int(v))
    for it in items:
        if it.study_id in years:
            it.meta["study_year"] = years[it.study_id]
    return inv
