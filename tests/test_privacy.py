"""FAULTS 29: no public output re-identifies a patient (docs/PRIVACY.md).

A DICOM tree with PHI planted in tags (name, id, birth date, accession number, UIDs), in the
folder names and burned into the pixels outside the sector, plus a label file keyed by the
patient id. Every public file and the command's output are scanned for each planted value; the
public preview is compared with the one of the same archive without burned-in text; hashed ids
are attacked by brute force over the id space with every candidate salt the public files offer.
"""

import json
import os
import re
import stat
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import dicom_dataset, fan_video, save, small_cfg

from echoclr_cli.data.privacy import hash_id
from echoclr_cli.preprocess.run import preprocess

H, W = 96, 120
PATIENTS = [  # (name, id, birth date, accession, study uid)
    ("DOE^JANE", "MRN4471", "19570312", "ACC998877", "1.2.826.0.1.3680043.8.498.4471"),
    ("ROE^RICHARD", "MRN0815", "19630921", "ACC112233", "1.2.826.0.1.3680043.8.498.815"),
    ("POE^EDGAR", "MRN3209", "19410119", "ACC445566", "1.2.826.0.1.3680043.8.498.3209"),
]
BURNED = "MRN4471 DOE"


def _archive(root: Path, burn: bool) -> Path:
    for k, (name, pid, dob, acc, uid) in enumerate(PATIENTS):
        folder = root / f"{name.replace('^', '_')}_{pid}" / acc
        for v in range(2):
            frames, mask = fan_video(12, H, W, seed=100 + 10 * k + v)
            if burn:  # burned-in PHI outside the fan: top-left corner and bottom band
                for f in frames:
                    cv2.putText(f, BURNED, (2, H - 20), cv2.FONT_HERSHEY_PLAIN, 0.7, (255,) * 3, 1)
                    cv2.putText(f, dob, (2, 20), cv2.FONT_HERSHEY_PLAIN, 0.6, (255,) * 3, 1)
            ds = dicom_dataset(frames, patient=pid, study=uid)
            ds.PatientName = name
            ds.PatientBirthDate = dob
            ds.AccessionNumber = acc
            ds.SeriesInstanceUID = f"{uid}.{v + 1}"
            save(ds, folder / f"{pid}_cine{v}.dcm")
        (folder / f"{pid}_report.dcm").write_bytes(b"not a dicom: " + name.encode())  # skipped
    return root


def _labels(path: Path) -> Path:
    pd.DataFrame({"PatientID": [p[1] for p in PATIENTS] + ["MRN9999"],
                  "as": ["1", "0", "yes", "1"]}).to_csv(path, index=False)  # fmt: skip
    return path


def cli(*args):
    from typer.testing import CliRunner

    from echoclr_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _public_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and "private" not in p.relative_to(out).parts]


def _planted(root: Path, labels: Path) -> list[str]:
    values = {root.as_posix(), labels.as_posix(), BURNED}
    for name, pid, dob, acc, uid in PATIENTS:
        values |= {name, *name.split("^"), pid, dob, acc, uid, f"{name.replace('^', '_')}_{pid}"}
    return sorted(values)


def _metadata_bytes(p: Path) -> bytes:
    """A file's bytes without its pixel payload: the header of an .npy, every chunk but IDAT of
    a .png, the whole file otherwise. Pixel bytes are not text: a short planted value (a 3-letter
    surname) occurs in them by chance, which says nothing about a leak (burned-in text is
    checked separately, on the masked pixels)."""
    data = p.read_bytes()
    if p.suffix == ".npy":
        with p.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            read(f)
            return data[: f.tell()]
    if p.suffix == ".png":
        out, i = [data[:8]], 8
        while i + 8 <= len(data):
            n, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
            if kind != b"IDAT":
                out.append(data[i : i + 12 + n])
            i += 12 + n
        return b"".join(out)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    root = _archive(tmp / "raw", burn=True)
    labels = _labels(tmp / "labels.csv")
    out = tmp / "data"
    res = cli("preprocess", "--input", root, "--output", out, "--labels", labels, "--size", "32",
              "--workers", "1", "--profile", "demo", "--allow-label-issues",
              "--set", "preprocess.min_frames=8", "--set", "preprocess.max_skipped_frac=1")  # fmt: skip
    assert res.exit_code == 0, res.output
    return root, labels, out, res.output


def test_no_planted_value_in_any_public_file_or_output(run):
    root, labels, out, output = run
    salt = json.loads((out / "private" / "salt.json").read_text())["salt"]
    planted = _planted(root, labels) + [salt]
    public = _public_files(out)
    names = {p.relative_to(out).as_posix() for p in public}
    assert {"manifest.csv", "skipped.csv", "report.json", "dataset.json", "labels_report.json",
            "preview.png"} <= names and "id_map.csv" not in names  # fmt: skip
    texts = {"<command output>": output}
    texts |= {p.name: p.read_text() for p in public if p.suffix in (".csv", ".json")}
    for where, text in texts.items():
        for value in planted:
            assert value not in text, f"{value!r} in {where}"
    for p in public:  # binary files too: npy headers, png chunks other than the pixel data
        data = _metadata_bytes(p)
        for value in planted:
            assert value.encode() not in data, f"{value!r} in {p}"
    # the skipped report file and the labels issues are there, by reference only
    skipped = pd.read_csv(out / "skipped.csv")
    assert (skipped["reason"] == "invalid_dicom").sum() == 3
    assert skipped["file"].str.fullmatch(r"f[0-9a-f]{15}").all()


def test_private_folder_modes(run):
    _, _, out, _ = run
    priv = out / "private"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o700
    files = list(priv.iterdir())
    assert {p.name for p in files} >= {"salt.json", "id_map.csv", "skipped_paths.csv",
                                       "preview_raw.png", "label_issues.csv", "inputs.json"}  # fmt: skip
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    ids = pd.read_csv(priv / "id_map.csv", dtype=str)
    assert set(ids.loc[ids["kind"] == "patient", "original"]) == {p[1] for p in PATIENTS}


def test_private_modes_regardless_of_umask(tmp_path):
    root = _archive(tmp_path / "raw", burn=False)
    old = os.umask(0)
    try:
        preprocess(small_cfg(salt=None), root, tmp_path / "out")
    finally:
        os.umask(old)
    priv = tmp_path / "out" / "private"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in priv.iterdir())
    assert stat.S_IMODE((tmp_path / "out" / "manifest.csv").stat().st_mode) == 0o666  # public


def test_hashed_ids_not_recomputable_from_public_outputs(run):
    """Brute force over the id space (MRN0000-MRN9999 and the planted ids) with every candidate
    salt found in the public files, the old public default and the empty salt: no match. The
    same attack with the private salt recovers every id (so the attack itself works)."""
    root, labels, out, _ = run
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    targets = {"patient": set(manifest["patient_id"]), "study": set(manifest["study_id"])}
    tokens = set()
    for p in _public_files(out):
        if p.suffix in (".csv", ".json"):
            tokens |= set(re.findall(r"[A-Za-z0-9_.\-]{6,}", p.read_text()))
    salts = {"echoclr", ""} | tokens
    space = {f"MRN{i:04d}" for i in range(10000)} | {p[4] for p in PATIENTS}

    def attack(salt_list):
        hits = set()
        for salt in salt_list:
            for kind, want in targets.items():
                cands = space if kind == "patient" else {p[4] for p in PATIENTS}
                hits |= {v for v in cands if hash_id(salt, kind, v) in want}
        return hits

    small = {s for s in salts if len(s) < 40}  # every token; long ones cannot be salts of ours
    assert len(small) > 10
    assert attack(small | {s for s in salts if len(s) >= 40}) == set()
    salt = json.loads((out / "private" / "salt.json").read_text())["salt"]
    assert attack([salt]) == {p[1] for p in PATIENTS} | {p[4] for p in PATIENTS}
    assert re.fullmatch(r"[0-9a-f]{32}", salt)


def test_burned_in_text_outside_sector_never_reaches_public_pixels(tmp_path):
    """Same archive with and without burned-in PHI outside the fan: identical stored videos and
    identical public preview; the private raw preview does show it (differs)."""
    outs = {}
    for burn in (True, False):
        root = _archive(tmp_path / f"raw{burn}", burn=burn)
        out = tmp_path / f"out{burn}"
        preprocess(small_cfg(salt="fixed-for-comparison"), root, out)
        outs[burn] = out
    a, b = outs[True], outs[False]
    ma, mb = pd.read_csv(a / "manifest.csv"), pd.read_csv(b / "manifest.csv")
    assert list(ma["video_id"]) != [] and list(ma["path"]) == list(mb["path"])
    for rel in ma["path"]:
        assert np.array_equal(np.load(a / rel), np.load(b / rel)), rel
    img = {k: cv2.imread(str(o / "preview.png")) for k, o in outs.items()}
    assert img[True].shape[0] > 0 and np.array_equal(img[True], img[False])
    raw = {k: cv2.imread(str(o / "private" / "preview_raw.png")) for k, o in outs.items()}
    assert not np.array_equal(raw[True], raw[False])
    assert "fixed-for-comparison" not in (a / "dataset.json").read_text()


def test_user_salt_never_written_publicly_and_ids_stable(tmp_path):
    root = _archive(tmp_path / "raw", burn=False)
    cfg = small_cfg(salt="my-site-secret-2024")
    preprocess(cfg, root, tmp_path / "a")
    preprocess(cfg, root, tmp_path / "b")
    for out in (tmp_path / "a",):
        for p in _public_files(out):
            assert b"my-site-secret-2024" not in p.read_bytes(), p
    ida = pd.read_csv(tmp_path / "a" / "manifest.csv")["patient_id"]
    idb = pd.read_csv(tmp_path / "b" / "manifest.csv")["patient_id"]
    assert list(ida) == list(idb)  # a user salt reproduces ids across datasets


def test_default_salt_random_per_dataset_kept_on_rerun(tmp_path):
    root = _archive(tmp_path / "raw", burn=False)
    cfg = small_cfg(salt=None)
    preprocess(cfg, root, tmp_path / "a")
    preprocess(cfg, root, tmp_path / "b")
    ids = {k: set(pd.read_csv(tmp_path / k / "manifest.csv")["patient_id"]) for k in "ab"}
    assert ids["a"].isdisjoint(ids["b"])  # two datasets, two secrets: ids do not link
    res = preprocess(cfg, root, tmp_path / "a")  # re-run: same secret, every video reused
    assert set(pd.read_csv(tmp_path / "a" / "manifest.csv")["patient_id"]) == ids["a"]
    assert res.n_reused == res.n_videos == 6


def test_splits_and_row_order_follow_the_salt(tmp_path):
    """The secret salt changes every id, and with them the row order and which patient lands
    in which split (issue 23 case 3: an order under a public key re-identified every patient
    from a cohort list). The same salt gives the same rows and splits."""
    root = tmp_path / "raw"
    for i in range(12):
        frames, _ = fan_video(10, H, W, seed=200 + i)
        save(dicom_dataset(frames, patient=f"MRN{i:04d}", study=f"1.2.3.{i}"), root / f"{i}.dcm")
    got = {}
    for name, salt in (("a", "echoclr"), ("b", "another-secret"), ("c", "another-secret")):
        out = tmp_path / name
        preprocess(small_cfg(salt=salt), root, out)
        df = pd.read_csv(out / "manifest.csv", dtype=str)
        ids = pd.read_csv(out / "private" / "id_map.csv", dtype=str)
        orig = dict(zip(ids["hashed"], ids["original"], strict=True))
        got[name] = [(orig[p], s) for p, s in zip(df["patient_id"], df["split"], strict=True)]
    assert got["a"] != got["b"] and got["b"] == got["c"]
    assert {s for _, s in got["b"]} == {"train", "val", "test"}


def test_synthetic_archive_keeps_reproducible_ids(tmp_path):
    """`echoclr synth` archives hold no patient: without --salt they use the fixed salt, so the
    demo's dataset (and results) are the same in every run."""
    from echoclr_cli.config.schema import Config
    from echoclr_cli.synth.archive import synthesize

    cfg = Config()
    cfg.synth.studies, cfg.synth.height, cfg.synth.width, cfg.synth.max_frames = 2, 80, 96, 20
    synthesize(cfg, tmp_path / "raw")
    for name in ("a", "b"):
        preprocess(small_cfg(salt=None), tmp_path / "raw", tmp_path / name)
    a, b = (pd.read_csv(tmp_path / n / "manifest.csv") for n in "ab")
    assert len(a) and list(a["video_id"]) == list(b["video_id"])
    assert list(a["video_id"]) == [
        hash_id("echoclr", "video", v)
        for v in pd.read_csv(tmp_path / "a" / "private" / "id_map.csv")
        .set_index("hashed")
        .loc[a["video_id"], "original"]
    ]
