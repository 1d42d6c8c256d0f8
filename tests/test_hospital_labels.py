"""Issue 21, points 3 and 4: label files keyed the way hospitals export them (accession number,
MRN, study UID, study date + patient), label values read as text (``None`` is a value), every
value that maps to neither class counted, and only ultrasound DICOMs stored (FAULTS 46)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import dicom_dataset, fan_video, id_map, save, skipped_by_path, small_cfg

from echoclr_cli.data import label_file, label_issues, label_keys, labels, privacy
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess.run import preprocess

# (patient id, accession number, study date, AS grade in the label file); one study each.
STUDIES = [
    ("PAT0", "00123", "20190305", "None"),  # zero-padded accession; 'None' = no stenosis
    ("PAT1", "A1234567", "20200611", "Severe"),
    ("PAT2", "0045678", "20181201", "Moderate"),
    ("PAT3", "7654321", "20210101", ""),  # empty cell: unknown, counted
    ("PAT4", "5550001", "20170720", "mild"),  # its DICOM has no Modality
]
EXPECTED = {"00123": 0, "A1234567": 1, "0045678": 0, "7654321": None, "5550001": 0}
PRESET = ["as:grade=av_stenosis"]


def _tree(root: Path) -> Path:
    """One US cine per study, plus a misfiled MR cine and an SR (no pixel data)."""
    frames, _ = fan_video(10, 48, 64, seed=3)
    for i, (pid, acc, date, _) in enumerate(STUDIES):
        ds = dicom_dataset(frames, patient=pid, study=f"1.2.826.0.1.3680043.9.{i}", date=date)
        ds.AccessionNumber = acc
        if i == 4:
            del ds.Modality
        save(ds, root / pid / f"{date}_{acc}" / "IM00001")
    mr = dicom_dataset(frames, patient="PAT9", study="1.2.826.0.1.3680043.9.9", date="20200101")
    mr.Modality, mr.AccessionNumber = "MR", "8888888"
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    save(mr, root / "PAT9" / "mr" / "IM00001")
    sr = dicom_dataset(frames, patient="PAT0", study="1.2.826.0.1.3680043.9.0")
    del sr.PixelData, sr.Rows, sr.Columns, sr.NumberOfFrames
    sr.Modality = "SR"
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    save(sr, root / "PAT0" / "report" / "SR00001")
    return root


def _labels(path: Path, rows: list[tuple[str, str]], key: str = "Accession Number") -> Path:
    pd.DataFrame(rows, columns=[key, "av_stenosis"]).to_csv(path, index=False)
    return path


def _by_original(out: Path, kind: str = "study") -> dict[str, str]:
    ids = id_map(out)
    ids = ids[ids["kind"] == kind]
    return dict(zip(ids["hashed"], ids["original"], strict=True))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hospital")
    root = _tree(tmp / "raw")
    lab = _labels(tmp / "labels.csv", [(acc, grade) for _, acc, _, grade in STUDIES])
    out = tmp / "data"
    res = preprocess(small_cfg(labels=lab, label_presets=PRESET), root, out)
    return root, lab, out, res


def test_accession_keyed_labels_every_study_keeps_its_label(hospital):
    root, lab, out, res = hospital
    man = pd.read_csv(out / "manifest.csv", dtype={"study_id": str})
    uid_of = _by_original(out)
    acc_of_uid = {f"1.2.826.0.1.3680043.9.{i}": s[1] for i, s in enumerate(STUDIES)}
    got = {acc_of_uid[uid_of[s]]: (None if np.isnan(a) else int(a))
           for s, a in zip(man["study_id"], man["as"], strict=True)}  # fmt: skip
    assert got == EXPECTED  # 'None' -> 0, '00123' matched as text, the empty cell unknown
    rep = json.loads((out / "labels_report.json").read_text())
    (key,) = rep["keys"]
    assert (key["column"], key["kind"], key["rows"]) == ("Accession Number", "accession", 5)
    assert key["tag"] == "AccessionNumber (0008,0050)"
    assert rep["issues"]["empty_value"]["count"] == 1 and rep["n_errors"] == 0
    assert "unmatched_id" not in rep["issues"] and "unlabelled_study" not in rep["issues"]
    (rule,) = rep["rules"]
    assert (rule["positive"], rule["negative"], rule["unknown"]) == (1, 3, 1)
    # the terminal shows the key and the counts
    assert any("keyed by column 'Accession Number'" in w for w in res.warnings)
    assert any("1 empty_value" in w for w in res.warnings)
    # no accession number leaves the private folder
    public = [p for p in out.rglob("*") if p.is_file() and "private" not in p.parts]
    text = "".join(p.read_text() for p in public if p.suffix in (".csv", ".json"))
    assert not any(acc in text for _, acc, _, _ in STUDIES if len(acc) >= 7)


def test_mr_skipped_as_not_ultrasound_sr_kept_as_no_pixel_data_missing_modality_counted(hospital):
    root, lab, out, res = hospital
    skipped = skipped_by_path(out)
    mr = skipped.loc["PAT9/mr/IM00001"]
    assert mr["reason"] == "not_ultrasound" and mr["detail"] == "Modality MR, not US"
    assert skipped.loc["PAT0/report/SR00001", "reason"] == "no_pixel_data"
    assert res.n_videos == 5 and res.skipped_by_reason == {"no_pixel_data": 1, "not_ultrasound": 1}
    report = json.loads((out / "report.json").read_text())
    dataset = json.loads((out / "dataset.json").read_text())
    assert report["modality_missing"] == 1 and dataset["modality_missing"] == 1
    assert any("1 DICOM file(s) without a Modality" in w for w in res.warnings)


def test_rerun_reuses_videos_and_keeps_the_checks(hospital, tmp_path):
    root, lab, out, _ = hospital
    res = preprocess(small_cfg(labels=lab, label_presets=PRESET), root, out)
    assert res.n_reused == 5 and res.skipped_by_reason == {"no_pixel_data": 1, "not_ultrasound": 1}
    # a journal written before the Modality check (no label key in its rows): headers re-read
    journal = out / "private" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    old = [lines[0]]
    for line in lines[1:]:
        e = json.loads(line)
        if e["res"]["status"] != "skipped":
            e["res"]["row"] = {k: v for k, v in e["res"]["row"].items() if not k.startswith("_")}
        old.append(json.dumps(e))
    journal.write_text("\n".join(old) + "\n")
    res = preprocess(small_cfg(labels=lab, label_presets=PRESET), root, out)
    assert res.n_reused == 5 and res.n_decoded == 5  # headers read, no video decoded again
    assert json.loads((out / "report.json").read_text())["modality_missing"] == 1
    man = pd.read_csv(out / "manifest.csv")
    assert sorted(man["as"].fillna(-1).tolist()) == [-1, 0, 0, 0, 1]


def test_no_match_error_names_column_tag_counts_and_shapes_never_values(hospital, tmp_path):
    root, _, _, _ = hospital
    # an export that went through a spreadsheet: accession numbers became floats
    rows = [(f"{int(acc.lstrip('A'))}.0", g) for _, acc, _, g in STUDIES]
    lab = _labels(tmp_path / "export.csv", rows)
    with pytest.raises(UserError) as e:
        preprocess(small_cfg(labels=lab, label_presets=PRESET), root, tmp_path / "d")
    msg = e.value.message
    assert "export.csv: none of its 5 rows matches a stored video" in msg
    assert "column 'Accession Number' (5 rows, 5 distinct" in msg
    assert "AccessionNumber (0008,0050)" in msg and "(5 studies, 5 distinct values" in msg
    assert "3 digits + '.' + 1 digit (1)" in msg  # the label side's shape
    assert "7 digits (3)" in msg and "A + 7 digits (1)" in msg and "5 digits (1)" in msg
    assert "marked failed" in msg and "preprocess.label_key" in e.value.fix
    for _, acc, _, _ in STUDIES:
        assert acc not in msg and acc.lstrip("A0") not in msg
    dataset = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert dataset["status"] == "failed"
    rep = json.loads((tmp_path / "d" / "labels_report.json").read_text())
    assert rep["issues"]["unmatched_id"]["count"] == 5
    assert rep["issues"]["unlabelled_study"]["count"] == 5
    # accepted with --allow-label-issues: a warning with the same facts, the dataset is usable
    cfg = small_cfg(labels=lab, label_presets=PRESET, allow_label_issues=True)
    res = preprocess(cfg, root, tmp_path / "d2")
    assert res.status == "ok" and any("none of its 5 rows matches" in w for w in res.warnings)


def test_partial_match_counts_unmatched_rows_and_unlabelled_studies(hospital, tmp_path):
    root, _, _, _ = hospital
    rows = [(acc, g) for _, acc, _, g in STUDIES[:3]] + [("9999999", "Severe"), (" 00123", "")]
    lab = _labels(tmp_path / "part.csv", rows)
    with pytest.raises(
        UserError,
        match=r"label problems: 1 duplicate_id \(part.csv line 6 "
        r"column 'Accession Number'\); 1 unmatched_id \(part.csv line 5\)",
    ):
        preprocess(small_cfg(labels=lab, label_presets=PRESET), root, tmp_path / "d")
    rep = json.loads((tmp_path / "d" / "labels_report.json").read_text())
    assert rep["issues"]["unmatched_id"]["count"] == 1
    unl = rep["issues"]["unlabelled_study"]
    assert unl["count"] == 2 and not unl["error"]
    assert all(ex["where"].startswith("part.csv: study s") for ex in unl["examples"])


def test_date_and_mrn_keyed_labels_in_any_date_format(hospital, tmp_path):
    root, _, _, _ = hospital
    forms = [lambda d: d, lambda d: f"{d[:4]}-{d[4:6]}-{d[6:]}",
             lambda d: f"{d[6:]}/{d[4:6]}/{d[:4]}"]  # fmt: skip
    lab = tmp_path / "by_date.csv"
    pd.DataFrame({"MRN": [f" {p} " for p, _, _, _ in STUDIES],
                  "Study Date": [forms[i % 3](d) for i, (_, _, d, _) in enumerate(STUDIES)],
                  "av_stenosis": [g for _, _, _, g in STUDIES]}).to_csv(lab, index=False)  # fmt: skip
    res = preprocess(small_cfg(labels=lab, label_presets=PRESET), root, tmp_path / "d")
    man = pd.read_csv(tmp_path / "d" / "manifest.csv")
    assert sorted(man["as"].fillna(-1).tolist()) == [-1, 0, 0, 0, 1]
    (key,) = res.label_report["keys"]
    assert key["kind"] == "date_patient" and key["date_column"] == "Study Date"
    assert key["tag"] == "StudyDate (0008,0020) + PatientID (0010,0020)"
    assert set(key["shapes"]) == {"YYYYMMDD + 3 letters + 1 digit",
                                  "YYYY-MM-DD + 3 letters + 1 digit",
                                  "DD/MM/YYYY + 3 letters + 1 digit"}  # fmt: skip


@pytest.mark.parametrize(
    "columns, kind, column",
    [(["Accession Number", "x"], "accession", "Accession Number"),
     (["AccessionNumber"], "accession", "AccessionNumber"), (["accession"], "accession", "accession"),
     (["ACC"], "accession", "ACC"), (["acc_num"], "accession", "acc_num"),
     (["MRN"], "patient", "MRN"), (["PatientID"], "patient", "PatientID"),
     (["Patient ID"], "patient", "Patient ID"), (["patient_id"], "patient", "patient_id"),
     (["StudyInstanceUID"], "study", "StudyInstanceUID"), (["Study UID"], "study", "Study UID"),
     (["study_id"], "study", "study_id"), (["MRN", "Study Date"], "date_patient", "MRN"),
     (["MRN", "Accession Number"], "accession", "Accession Number")],
)  # fmt: skip
def test_header_spellings_recognised(columns, kind, column):
    key = label_keys.find_label_key(pd.DataFrame(columns=columns), "auto", Path("l.csv"))
    assert (key.kind, key.column) == (kind, column)


def test_label_key_setting_chooses_and_refuses(tmp_path):
    lab = pd.DataFrame(columns=["MRN", "Accession Number", "Study Date"])
    assert label_keys.find_label_key(lab, "patient_id", Path("l.csv")).kind == "patient"
    assert label_keys.find_label_key(lab, "study_date", Path("l.csv")).kind == "date_patient"
    auto = label_keys.find_label_key(lab, "auto", Path("l.csv"))
    assert auto.kind == "accession" and auto.others == ["MRN"]
    with pytest.raises(UserError, match=r"no id column .* for preprocess.label_key=study_uid"):
        label_keys.find_label_key(lab, "study_uid", Path("l.csv"))
    mixed = pd.DataFrame({"MRN": ["1", "2"], "Study Date": ["13/01/2020", "01/13/2020"]})
    with pytest.raises(UserError, match="both DD/MM/YYYY and MM/DD/YYYY"):
        label_keys.find_label_key(mixed, "auto", Path("l.csv"))
    from echoclr_cli.config.schema import Config

    with pytest.raises(ValueError):
        Config.model_validate({"preprocess": {"label_key": "mrn"}})
    assert Config.model_validate({"preprocess": {"label_key": "accession"}})


def test_dates_and_shapes():
    assert {label_keys.normalise_date(d) for d in ("20190305", "2019-03-05", "2019/3/5",
            "05/03/2019", "5.3.2019", "2019-03-05 14:02:00")} == {"20190305"}  # fmt: skip
    assert label_keys.normalise_date("03/25/2019", "mdy") == "20190325"
    assert (
        label_keys.normalise_date("31/02/2019") is None and label_keys.normalise_date("x") is None
    )
    assert label_keys.key_value("accession", " 00123 ") == "00123"  # text, never 123.0
    shape = label_keys.value_shape
    assert shape("1234567890") == "10 digits" and shape("A1234567") == "A + 7 digits"
    assert shape("1.2.840.113619.2.55.3.604688119.971.1234567890.123") == "dotted UID, 40-64 chars"
    assert shape("2019-03-05", date=True) == "YYYY-MM-DD" and shape("") == "empty"
    assert shape(None) == "missing" and shape("Müller") == "6 letters"
    assert shape("12345.0") == "5 digits + '.' + 1 digit" and shape("a\x00b") == "A + symbol + A"


def test_values_read_as_text_none_is_a_value_na_is_counted(tmp_path):
    path = tmp_path / "l.csv"
    pd.DataFrame({"MRN": ["1", "2", "3", "4", "5", "6", "7"],
                  "av_stenosis": ["None", "NA", "null", "N/A", "", "Moderate-Severe", "Severe"],
                  "flag": ["0", "1", "None", "NA", "", "1", "0"]}).to_csv(path, index=False)  # fmt: skip
    cfg = small_cfg(label_presets=PRESET).preprocess
    lf = label_file.read_label_file(cfg, path, "salt")
    got = [lf.table[privacy.hash_id("salt", "patient", str(i))]["as"] for i in range(1, 8)]
    assert got[0] == 0.0 and got[6] == 1.0 and all(np.isnan(got[i]) for i in range(1, 6))
    rep = label_issues.issues_report(lf.issues, allowed=False)
    assert rep["issues"]["na_value"]["count"] == 3 and rep["issues"]["na_value"]["error"]
    assert rep["issues"]["bad_value"]["count"] == 1  # moderate-severe is not severe
    assert rep["n_errors"] == 4
    # a 0/1 column (no rule): None and NA are not 0/1 -> counted; the empty cell is counted too
    lf = label_file.read_label_file(small_cfg().preprocess, path, "salt")
    rep = label_issues.issues_report(lf.issues, allowed=True)
    assert rep["issues"]["bad_value"]["count"] == 1 and rep["issues"]["na_value"]["count"] == 1
    assert rep["issues"]["empty_value"]["count"] == 1 and rep["n_errors"] == 2
    assert not rep["issues"]["empty_value"]["error"]
    assert "dropped_column" in rep["issues"]  # av_stenosis: no 0/1 value; the hint names the preset
    assert any("as:grade=av_stenosis" in d["why"] for d in rep["dropped_columns"])
    # label_map 'col==value': None is the other class, NA is counted, never the other class
    v, bad = labels.map_label(pd.read_csv(path, dtype=str, keep_default_na=False),
                              "av_stenosis==severe", "l.csv")  # fmt: skip
    assert v.tolist()[0] == 0.0 and np.isnan(v[1]) and bad.tolist()[1:4] == [True] * 3


def test_as_and_lvh_maps_are_explicit():
    vals = pd.Series(["None", "no", "Normal", "trace", "Mild", "Mild to Moderate", "moderate",
                      "Severe", "CRITICAL", "moderate-severe", "", "3"])  # fmt: skip
    v, bad = labels.as_label(vals)
    assert v.tolist()[:9] == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert bad.tolist() == [False] * 9 + [True, False, True] and np.isnan(v[10])
    v, bad = labels.lvh_label(pd.Series(["Hypertrophy", "Normal", "no LVH", "120", "abnormal", ""]))
    assert v.tolist()[:3] == [1, 0, 0] and bad.tolist() == [False, False, False, True, True, False]
    # the preset can map a grade it does not know
    from echoclr_cli.data import presets, rules

    r = presets.expand_preset("as:grade=g,severe=moderate-severe")
    res = rules.evaluate(r, pd.DataFrame({"g": ["Moderate to Severe", "mild", "odd"]}))
    assert res.values.tolist()[:2] == [1.0, 0.0] and res.bad.tolist() == [False, False, True]
