"""Public dataset layouts on tiny fixtures in their exact folder conventions: MIMIC-IV-ECHO
(files/pNN/pSUBJECT/sSTUDY/STUDY_NNNN.dcm + echo-record-list.csv + echo-study-list.csv) and
EchoNet-LVH (Batch*/HASH.avi + MeasurementsList.csv in long form)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import dicom_dataset, fan_video, id_map, save, small_cfg, write_avi

from echoclr_cli.data.layouts import discover as layouts
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess.run import preprocess

# subject, study, acquisition year, measurement_id (structured measurements)
MIMIC = [("10002221", "94106955", 2180, "m1"), ("10002221", "94106956", 2182, "m2"),
         ("10003400", "90000001", 2150, "m3"), ("10004500", "91111111", 2160, "")]  # fmt: skip


def mimic_archive(root: Path) -> Path:
    frames, _ = fan_video(10, 48, 64, seed=1)
    records = []
    for subject, study, year, _ in MIMIC:
        for k in (1, 2):
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{study}_{k:04d}.dcm"
            # header ids differ from the path: the path is what the layout trusts
            save(dicom_dataset(frames, patient="HDR", study="1.2.3"), root / rel)
            records.append((subject, study, f"{year}-05-0{k} 10:00:00", rel))
    records.append(
        (
            "10009999",
            "99999999",
            "2170-01-01 00:00:00",
            "files/p10/p10009999/s99999999/99999999_0001.dcm",
        )
    )  # not downloaded
    pd.DataFrame(records, columns=["subject_id", "study_id", "acquisition_datetime",
                                   "dicom_filepath"]).to_csv(root / "echo-record-list.csv",
                                                             index=False)  # fmt: skip
    pd.DataFrame([(s, st, f"{y}-05-01 09:00:00", m) for s, st, y, m in MIMIC],
                 columns=["subject_id", "study_id", "study_datetime", "measurement_id"]).to_csv(
        root / "echo-study-list.csv", index=False)  # fmt: skip
    save(dicom_dataset(frames), root / "files" / "p10" / "stray.dcm")  # off the convention
    return root


def structured_measurements(path: Path) -> Path:
    """MIMIC-IV-ECHO structured-measurement columns, keyed by measurement_id (long form)."""
    rows = [("10002221", "m1", "av_pk_vel", "4.5", "m/s"), ("10002221", "m1", "av_mean_grad", "45",
             "mmHg"), ("10002221", "m2", "av_pk_vel", "2.1", "m/s"),
            ("10002221", "m2", "av_area_continuity", "2.2", "cm2"),
            ("10002221", "m2", "av_mean_grad", "20", "mmHg"),
            ("10003400", "m3", "lvef", "55", "%"),
            ("10005000", "m9", "av_pk_vel", "5.0", "m/s")]  # no study with DICOMs  # fmt: skip
    pd.DataFrame(rows, columns=["subject_id", "measurement_id", "measurement", "result",
                                "unit"]).to_csv(path, index=False)  # fmt: skip
    return path


def test_mimic_layout_detected_ids_from_path_years_from_record_list(tmp_path):
    root = mimic_archive(tmp_path / "mimic")
    assert layouts.detect_layout(root) == "mimic-echo"
    inv = layouts.discover(small_cfg().preprocess, root, salt="s")
    assert inv.layout == "mimic-echo" and len(inv.items) == 8
    it = next(i for i in inv.items if i.rel.startswith("files/p10/p10002221/s94106955/"))
    assert (it.study_id, it.patient_id, it.meta["study_year"]) == ("94106955", "10002221", 2180)
    assert {s["file"]: s["reason"] for s in inv.skipped} == {"files/p10/stray.dcm": "unlisted"}
    (note,) = [r for r in inv.label_issues if r["kind"] == "table"]
    assert note["counts"]["listed_not_downloaded"] == 1
    assert note["counts"]["downloaded_not_listed"] == 0
    # without the record list the path convention alone is recognised
    (root / "echo-record-list.csv").unlink()
    (root / "echo-study-list.csv").unlink()
    assert layouts.detect_layout(root) == "mimic-echo"
    inv = layouts.discover(small_cfg().preprocess, root, salt="s")
    assert len(inv.items) == 8 and "study_year" not in inv.items[0].meta


def test_mimic_preprocess_with_structured_measurements_as_preset(tmp_path):
    root = mimic_archive(tmp_path / "mimic")
    meas = structured_measurements(tmp_path / "structured-measurement.csv")
    cfg = small_cfg(labels=meas, label_presets=[
        "as:vmax=av_pk_vel,mean_gradient=av_mean_grad,ava=av_area_continuity"])  # fmt: skip
    res = preprocess(cfg, root, tmp_path / "data")
    out = tmp_path / "data"
    man = pd.read_csv(out / "manifest.csv", dtype={"study_year": "Int64"})
    ids = id_map(out)
    study = dict(zip(ids["hashed"], ids["original"], strict=True))
    man["orig_study"] = man["study_id"].map(study)
    man["orig_patient"] = man["patient_id"].map(study)
    by = man.groupby("orig_study")
    assert by["as"].first().to_dict()["94106955"] == 1.0
    assert by["as"].first().to_dict()["94106956"] == 0.0
    assert np.isnan(by["as"].first().to_dict()["90000001"])  # only lvef -> unknown
    assert np.isnan(by["as"].first().to_dict()["91111111"])  # no measurement_id
    assert by["orig_patient"].first().to_dict()["94106955"] == "10002221"  # path, not header
    assert by["study_year"].first().to_dict()["90000001"] == 2150
    rep = json.loads((out / "labels_report.json").read_text())
    (rule,) = rep["rules"]
    assert (rule["positive"], rule["negative"], rule["unknown"]) == (1, 1, 1)
    tables = {t["source"]: t for t in rep["tables"]}
    assert tables["structured-measurement.csv"]["not_in_study_list"] == 1
    assert res.n_videos == 8


def lvh_archive(root: Path, names=("0X1A", "0X2B", "0X3C", "0X4D")) -> Path:
    frames, _ = fan_video(12, 48, 64, seed=2, overlay=False)
    meas = {"0X1A": (1.4, 1.0, 4.5), "0X2B": (0.9, 0.8, 4.8), "0X3C": (None, 0.9, 5.0),
            "0X4D": (1.0, None, 4.2)}  # IVSd, LVPWd, LVIDd (cm)  # fmt: skip
    splits = {"0X1A": "train", "0X2B": "train", "0X3C": "val", "0X4D": "test"}
    rows, k = [], 0
    for name in names:
        write_avi(root / f"Batch{1 + names.index(name) % 2}" / f"{name}.avi", frames)
        for calc, val in zip(("IVSd", "LVPWd", "LVIDd"), meas[name], strict=True):
            if val is None:
                continue
            rows.append({"Unnamed: 0": k, "HashedFileName": name, "Calc": calc,
                         "CalcValue": val, "Frame": 3, "X1": 10.0, "X2": 12.0, "Y1": 20.0,
                         "Y2": 30.0, "Frames": 12, "FPS": 30, "Width": 64, "Height": 48,
                         "split": splits[name]})  # fmt: skip
            k += 1
    rows.append({**rows[0], "Unnamed: 0": k, "CalcValue": 1.6})  # repeated IVSd -> mean 1.5
    rows.append({**rows[0], "Unnamed: 0": k + 1, "HashedFileName": "0X9Z"})  # no video
    pd.DataFrame(rows).to_csv(root / "MeasurementsList.csv", index=False)
    (root / "Batch2" / "notes.txt").write_text("x")
    write_avi(root / "Batch1" / "0XEXTRA.avi", frames)  # not in the list
    return root


def test_echonet_lvh_layout_splits_rules_and_skips(tmp_path):
    root = lvh_archive(tmp_path / "lvh")
    assert layouts.detect_layout(root) == "echonet-lvh"
    cfg = small_cfg(label_rules=["lvh=IVSd > 1.1 or LVPWd > 1.1"]).preprocess
    inv = layouts.discover(cfg, root, salt="s")
    got = {it.study_id: (it.meta["split"], it.meta["lvh"]) for it in inv.items}
    assert got["0X1A"] == ("train", 1.0) and got["0X2B"] == ("train", 0.0)
    assert got["0X3C"][0] == "val" and np.isnan(got["0X3C"][1])  # IVSd missing
    assert np.isnan(got["0X4D"][1])  # LVPWd missing, IVSd 1.0 -> unknown, not negative
    reasons = {s["file"]: s["reason"] for s in inv.skipped}
    assert reasons == {"Batch*/0X9Z.avi": "missing_file", "Batch1/0XEXTRA.avi": "unlisted",
                       "Batch2/notes.txt": "not_media"}  # fmt: skip
    (table,) = [r["counts"] for r in inv.label_issues if r["kind"] == "table"]
    assert table["duplicates"] == 1 and table["ids"] == 5
    (rule,) = [r["counts"] for r in inv.label_issues if r["kind"] == "rule"]
    assert (rule["positive"], rule["negative"], rule["unknown"]) == (2, 1, 2)


def test_echonet_lvh_preprocess_end_to_end_and_without_rules(tmp_path):
    root = lvh_archive(tmp_path / "lvh")
    cfg = small_cfg(label_rules=["lvh=IVSd > 1.1 or LVPWd > 1.1"])
    res = preprocess(cfg, root, tmp_path / "d")
    man = pd.read_csv(tmp_path / "d" / "manifest.csv")
    assert res.layout == "echonet-lvh" and len(man) == 4
    assert sorted(man["split"]) == ["test", "train", "train", "val"]
    assert man["lvh"].sum() == 1 and man["lvh"].isna().sum() == 2
    # no rules: the splits only (a pretraining dataset), said so in the table summary
    inv = layouts.discover(small_cfg().preprocess, root, salt="s")
    assert inv.label_columns == [] and len(inv.items) == 4


def test_echonet_lvh_errors(tmp_path):
    root = lvh_archive(tmp_path / "lvh")
    with pytest.raises(UserError, match=r"names column\(s\) \['IVS'\]"):
        layouts.discover(small_cfg(label_rules=["lvh=IVS > 1.1"]).preprocess, root, salt="s")
    pd.DataFrame({"HashedFileName": ["a"], "Calc": ["IVSd"]}).to_csv(
        root / "MeasurementsList.csv", index=False
    )
    with pytest.raises(UserError, match=r"no column\(s\) \['CalcValue'\]"):
        layouts.discover(small_cfg().preprocess, root, layout="echonet-lvh", salt="s")
