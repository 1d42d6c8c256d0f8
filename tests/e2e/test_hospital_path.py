"""Issue 21's acceptance: the hospital path end to end on CPU, as a new user runs it.

A hospital-style export (MRN/DATE_ACC/SEnnnn/IMnnnnn with no extensions, an SR, a DICOMDIR, a
misfiled CT and MR, Thumbs.db) and a labels CSV keyed by ``Accession Number`` whose values include
``None``, through preprocess, check, pretrain (1 epoch), finetune, evaluate, predict and report,
with no ``--set`` and no ``--profile`` (the CPU machine's ``auto`` profile). Every study keeps its
label, the MR and CT are skipped with reasons, and nothing is written outside the named outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from echoclr_cli.cli import app
from tests.preprocess_fixtures import dicom_dataset, fan_video, read_skipped, save

N_PATIENTS = 20
GRADES = ["None", "Severe", "Mild", "Severe", "Moderate"]  # AS grades as a report export has them
SMALL = ["--device", "cpu", "--batch-size", "4", "--epochs", "1"]  # flags only: no --set/--profile


def cli(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"echoclr {' '.join(map(str, args))}:\n{res.output}"
    return res.output


def accession(i: int) -> str:
    return f"{i:08d}"  # zero-padded, as RIS systems export them (a float reader would lose them)


def hospital_export(root: Path, patients: range) -> Path:
    """One echo study per patient at MRN/DATE_ACC/SE0001/IM00001 (no extensions)."""
    for i in patients:
        frames, _ = fan_video(16, 96, 120, seed=100 + i)
        ds = dicom_dataset(frames, patient=f"MRN{i:06d}", study=f"1.2.826.0.1.3680043.{i}")
        ds.AccessionNumber = accession(i)
        save(ds, root / f"MRN{i:06d}" / f"20190305_{accession(i)}" / "SE0001" / "IM00001")
    return root


def misfiled(root: Path) -> None:
    """The non-echo objects a real export carries, in the first patient's study folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study = root / "MRN000000" / f"20190305_{accession(0)}"
    for modality, series in (("MR", "SE0002"), ("CT", "SE0003")):
        frames, _ = fan_video(32, 96, 120, seed=7)
        ds = dicom_dataset(frames, patient="MRN000000", study="1.2.826.0.1.3680043.0")
        ds.Modality = modality
        save(ds, study / series / "IM00001")
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID, sr.Modality = sr.file_meta.MediaStorageSOPClassUID, "SR"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID
    sr.PatientID, sr.StudyInstanceUID = "MRN000000", "1.2.826.0.1.3680043.0"
    save(sr, study / "SE0004" / "IM00001")
    ddir = Dataset()
    ddir.file_meta = FileMetaDataset()
    ddir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory
    ddir.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ddir.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ddir.FileSetID = "EXPORT"
    save(ddir, root / "DICOMDIR")
    (root / "MRN000001" / "Thumbs.db").write_bytes(np.random.default_rng(0).bytes(2048))


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """Runs the whole path once, in a fresh working directory; returns (work dir, outputs)."""
    work = tmp_path_factory.mktemp("hospital")
    archive = hospital_export(work / "export", range(N_PATIENTS))
    misfiled(archive)
    hospital_export(work / "worklist", range(N_PATIENTS, N_PATIENTS + 2))
    labels = pd.DataFrame(
        {
            "Accession Number": [accession(i) for i in range(N_PATIENTS)],
            "Patient Name": ["Doe^Jane"] * N_PATIENTS,
            "av_stenosis": [GRADES[i % len(GRADES)] for i in range(N_PATIENTS)],
        }
    )
    labels.to_csv(work / "labels.csv", index=False)
    inputs = listing(work)
    old = Path.cwd()
    os.chdir(work)  # a bare file name must not leave anything in the working directory
    try:
        out = {"preprocess": cli("preprocess", "--input", "export", "--output", "data",
                                 "--labels", "labels.csv",
                                 "--label-preset", "as:grade=av_stenosis")}  # fmt: skip
        out["check"] = cli("check", "--data", "data", "--task", "as")
        out["pretrain"] = cli("pretrain", "--method", "echoclr", "--data", "data",
                              "--out", "runs/pretrain", *SMALL)  # fmt: skip
        out["finetune"] = cli("finetune", "--data", "data", "--task", "as", "--init",
                              "runs/pretrain", "--out", "runs/ft", *SMALL)  # fmt: skip
        out["evaluate"] = cli("evaluate", "runs/ft", "--data", "data", "--split", "test",
                              "--out", "runs/eval", "--device", "cpu")  # fmt: skip
        out["predict"] = cli("predict", "runs/ft", "--input", "worklist", "--out",
                             "predictions.csv", "--device", "cpu")  # fmt: skip
        out["report"] = cli("report", "runs/ft", "--out", "report.html")
    finally:
        os.chdir(old)
    return work, inputs, out


def test_every_study_keeps_its_label(hospital):
    work, _, _ = hospital
    man = pd.read_csv(work / "data/manifest.csv", dtype=str, keep_default_na=False)
    assert man["study_id"].nunique() == N_PATIENTS  # one study per patient, none lost
    per_study = man.groupby("study_id")["as"].first()
    assert (per_study != "").all()  # `None` is "no stenosis", never a missing label
    severe = sum(GRADES[i % len(GRADES)] == "Severe" for i in range(N_PATIENTS))
    assert (per_study == "1").sum() == severe and (per_study == "0").sum() == N_PATIENTS - severe
    report = json.loads((work / "data/labels_report.json").read_text())
    assert [k["tag"] for k in report["keys"]] == ["AccessionNumber (0008,0050)"]
    assert report["n_errors"] == 0


def test_mr_ct_sr_dicomdir_and_thumbs_are_skipped_with_reasons(hospital):
    work, _, _ = hospital
    reasons = read_skipped(work / "data").set_index("path")["reason"]
    by_series = {Path(p).parts[-2] if "SE000" in p else Path(p).name: r for p, r in reasons.items()}
    assert by_series["SE0002"] == by_series["SE0003"] == "not_ultrasound"  # MR, CT
    assert by_series["SE0004"] == "no_pixel_data"  # SR
    assert "DICOMDIR" in by_series and "Thumbs.db" in by_series
    assert len(reasons) == 5  # every skipped file has one row; the echo videos all went in


def test_the_cpu_defaults_follow_the_data(hospital):
    _, _, out = hospital
    for cmd in ("check", "pretrain", "finetune"):
        assert "frames 112x112 (dataset)" in out[cmd].splitlines()[0], out[cmd]


def test_nothing_is_written_outside_the_named_outputs(hospital):
    work, inputs, _ = hospital
    named = (
        "data",
        "runs",
        "predictions.csv",
        "predictions_study.csv",
        "predictions.private.csv",
        "report.html",
        "report.md",
        "report_files",
        "report.model_card.json",
        ".echoclr-files.json",
    )  # fmt: skip  (the ledger of what the tools wrote here)
    new = listing(work) - inputs
    outside = sorted(p for p in new if Path(p).parts[0] not in named)
    assert outside == []
    assert not {p for p in new if Path(p).parts[0] in ("export", "worklist")}  # inputs untouched


def test_predictions_join_back_to_the_worklist(hospital):
    work, _, _ = hospital
    pred = pd.read_csv(work / "predictions.csv", dtype=str, keep_default_na=False)
    assert "split" not in pred.columns and "y_pred" in pred.columns
    private = pd.read_csv(work / "predictions.private.csv", dtype=str, keep_default_na=False)
    assert set(private["AccessionNumber"]) == {accession(N_PATIENTS), accession(N_PATIENTS + 1)}
    public = (work / "predictions.csv").read_text()
    assert "MRN" not in public and accession(N_PATIENTS) not in public
