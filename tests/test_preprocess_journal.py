"""Preprocess journal (kill -9 and re-run), cheap fingerprints, --workers auto, and the
de-identified DICOM columns of the manifest."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from preprocess_fixtures import small_cfg

from echoclr_cli.data.manifest import OPTIONAL_COLUMNS, label_columns, load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess import journal as jr
from echoclr_cli.preprocess.pool import resolve_workers
from echoclr_cli.preprocess.run import preprocess
from echoclr_cli.synth.archive import synthesize

RUN = """
import sys
from pathlib import Path
from echoclr_cli.config.schema import Config
from echoclr_cli.preprocess.run import preprocess
cfg = Config()
cfg.preprocess.salt = "echoclr"
cfg.preprocess.size = 32
cfg.preprocess.min_frames = 8
cfg.preprocess.max_skipped_frac = 1.0
cfg.preprocess.workers = int(sys.argv[3])
preprocess(cfg, Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _archive(root: Path, fmt: str = "dicom", studies: int = 4) -> Path:
    cfg = small_cfg()
    cfg.synth.studies, cfg.synth.height, cfg.synth.width = studies, 64, 80
    cfg.synth.min_frames, cfg.synth.max_frames, cfg.synth.max_videos = 10, 12, 2
    cfg.synth.format = fmt
    synthesize(cfg, root)
    return root


@pytest.fixture(scope="module")
def dicom_raw(tmp_path_factory):
    return _archive(tmp_path_factory.mktemp("jr") / "raw")


def _run(raw: Path, out: Path, workers: int = 1, kill_after: int | None = None):
    env = dict(os.environ)
    env.pop(jr.KILL_AFTER_ENV, None)
    if kill_after is not None:
        env[jr.KILL_AFTER_ENV] = str(kill_after)
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:  # a file, not a pipe: a worker left behind cannot block the read
        proc = subprocess.run([sys.executable, "-c", RUN, str(raw), str(out), str(workers)],
                              env=env, stdout=f, stderr=subprocess.STDOUT, timeout=300)  # fmt: skip
    proc.stderr = log.read_text()
    return proc


def _children_of_cmd(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker`` (Linux /proc)."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_kill9_then_rerun_redoes_only_the_rest_byte_identical(dicom_raw, tmp_path):
    full = tmp_path / "full"
    assert _run(dicom_raw, full).returncode == 0
    n_items = _report(full)["n_decoded"]
    assert n_items >= 6
    out = tmp_path / "resumed"
    killed = _run(dicom_raw, out, workers=2, kill_after=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    time.sleep(1.5)  # the pool's workers notice their parent is gone and exit
    assert not [p for p in _children_of_cmd(str(out))], "workers left behind"
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / "dataset.json").read_text())["status"] == "running"
    journal = out / "private" / jr.JOURNAL
    assert len(journal.read_text().splitlines()) == 1 + 3  # header + the 3 finished files
    assert oct(journal.stat().st_mode & 0o777) == "0o600"
    again = _run(dicom_raw, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _report(out)["n_decoded"] == n_items - 3  # only the files not journaled
    for name in ("manifest.csv", "skipped.csv"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    # no-op re-run: nothing opened, same bytes
    assert _run(dicom_raw, out).returncode == 0
    assert _report(out)["n_decoded"] == 0
    assert (out / "manifest.csv").read_bytes() == (full / "manifest.csv").read_bytes()
    # the journal names input files: it never leaves the private folder
    assert not list(out.glob(jr.JOURNAL)) and not (out / "report.json").read_text().count("journal")


def test_fingerprint_change_hashes_and_reuses_same_content(dicom_raw, tmp_path):
    out = tmp_path / "d"
    res = preprocess(small_cfg(), dicom_raw, out)
    before = (out / "manifest.csv").read_bytes()
    ids = pd.read_csv(out / "private" / "id_map.csv")
    rel = ids.loc[ids["kind"] == "video", "original"].iloc[0]
    f = dicom_raw / rel
    st = f.stat()
    try:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
        again = preprocess(small_cfg(), dicom_raw, out)
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert again.n_decoded == 1 and again.n_reused == res.n_videos  # hashed, then reused
    assert (out / "manifest.csv").read_bytes() == before
    other = preprocess(small_cfg(max_frames=11), dicom_raw, out)  # settings changed: all redone
    assert other.n_decoded == res.n_decoded and other.n_reused == 0
    redo = preprocess(small_cfg(max_frames=11, overwrite=True), dicom_raw, out)
    assert redo.n_decoded == res.n_decoded


def test_truncated_last_journal_line_is_redone(dicom_raw, tmp_path):
    out = tmp_path / "d"
    res = preprocess(small_cfg(), dicom_raw, out)
    journal = out / "private" / jr.JOURNAL
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 40])  # the last entry cut mid-line
    again = preprocess(small_cfg(), dicom_raw, out)
    assert again.n_decoded == 1 and again.n_videos == res.n_videos


def test_dicom_fields_in_manifest_without_uids_or_dates(dicom_raw, tmp_path):
    out = tmp_path / "d"
    preprocess(small_cfg(), dicom_raw, out)
    text = (out / "manifest.csv").read_text()
    df = pd.read_csv(out / "manifest.csv")
    for c in OPTIONAL_COLUMNS:
        assert c in df.columns
    assert set(df["manufacturer"]) <= {"EchoSynth", "SonoView"} and df["manufacturer"].notna().all()
    assert df["frame_rate_band"].notna().all() and df["study_year"].notna().all()
    man = load_manifest(out)
    assert not set(OPTIONAL_COLUMNS) & set(label_columns(man))
    assert not set(OPTIONAL_COLUMNS) & set(label_columns(pd.read_csv(out / "manifest.csv")))
    secrets = set()
    for f in dicom_raw.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate",
                    "ContentDate", "PatientID"):  # fmt: skip
            if ds.get(tag):
                secrets.add(str(ds.get(tag)))
    assert secrets and not [s for s in secrets if s in text]


def test_avi_inputs_leave_dicom_fields_empty(tmp_path):
    raw = _archive(tmp_path / "raw", fmt="avi", studies=2)
    out = tmp_path / "d"
    preprocess(small_cfg(), raw, out)
    df = pd.read_csv(out / "manifest.csv")
    for c in ("manufacturer", "model", "sex", "age_band"):
        assert df[c].isna().all(), c
    assert df["frame_rate_band"].notna().all()  # from the stored fps


def test_workers_auto(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert resolve_workers("auto") == 7
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert resolve_workers("auto") == 1
    assert resolve_workers(3) == 3
    with pytest.raises(UserError, match="workers"):
        resolve_workers(0)
    from echoclr_cli.config.schema import Config

    assert Config().preprocess.workers == "auto"


def test_workers_option_values():
    from echoclr_cli.cli.common import build_config

    def workers(value):
        cfg = build_config(section="preprocess", config=None, sets=None, profile="demo",
                           verbose=False, quiet=True, flags={"preprocess.workers": value})  # fmt: skip
        return cfg.preprocess.workers

    assert workers("auto") == "auto" and workers("3") == 3
    with pytest.raises(UserError, match="preprocess.workers"):
        workers("lots")
