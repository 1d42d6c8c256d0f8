"""Issue 23 cases 1, 3 and 10 (source_hash): the salt stays private, order and splits are keyed
by it, ``source_hash`` is an HMAC with it; and the privacy scan over every command.

The scan runs every command on a small hospital-style DICOM archive (PHI in tags, folder names
and the label file) with the dataset salt given by a ``--config`` file (every command gets it),
by ``--salt`` and by ``ECHOCLR_SALT``, then reads every file written outside ``private/`` -
checkpoints through ``torch.load(weights_only=True)`` and their strings, TensorBoard events as
bytes, the report, sweep files - and the commands' output, for the salt, MRNs, accession numbers,
UIDs, names, dates and input paths.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from preprocess_fixtures import dicom_dataset, fan_video, save
from test_privacy import _metadata_bytes
from typer.testing import CliRunner

from echoclr_cli.cli import app
from echoclr_cli.data.manifest import assign_splits
from echoclr_cli.data.privacy import hash_id

SALT = "st-elsewhere-site-secret-7f3a9c2e41"  # what a site config would hold
N = 12  # patients, one study of one video each
ARCHIVE = "StElsewhere_echo_export"  # the archive folder's own name: never in a report
PATIENTS = [  # (name, MRN, birth date, accession, study uid, study date)
    (f"DOE{i:02d}^JANE", f"MRN4471{i:02d}", f"195703{i + 1:02d}", f"ACC99887{i:02d}",
     f"1.2.826.0.1.3680043.8.498.4471{i:02d}", f"201903{i + 1:02d}")
    for i in range(N)
]  # fmt: skip
TINY = {  # every command: 32 px, width 0.125, 4-frame clips, 1 epoch, no plots
    "model": {"width": 0.125},
    "runtime": {"device": "cpu", "workers": 0, "tensorboard": True},
    "preprocess": {"size": 32, "min_frames": 8, "workers": 1, "split": [0.5, 0.25, 0.25]},
    "pretrain": {"epochs": 1, "batch_size": 4, "clip_len": 4},
    "finetune": {"epochs": 1, "batch_size": 4, "clip_len": 4, "patience": 0},
    "evaluate": {"bootstrap": 10, "plots": False, "clips_per_video": 1},
    "sweep": {"ratios": [1.0], "inits": ["random"], "tasks": ["as"], "seeds": [0],
              "lrs": [0.0001], "run_plots": False},
}  # fmt: skip


def cli(*args, env: dict | None = None):
    res = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert res.exit_code == 0, f"echoclr {' '.join(map(str, args))}:\n{res.output}"
    return res.output


def hospital_archive(root: Path, patients=PATIENTS) -> Path:
    """MRN/DATE_ACC/SE0001/IM00001 (no extensions), PHI in the tags and the folder names."""
    for k, (name, mrn, dob, acc, uid, date) in enumerate(patients):
        frames, _ = fan_video(12, 64, 80, seed=300 + k)
        ds = dicom_dataset(frames, patient=mrn, study=uid, date=date)
        ds.PatientName, ds.PatientBirthDate, ds.AccessionNumber = name, dob, acc
        save(ds, root / mrn / f"{date}_{acc}" / "SE0001" / "IM00001")
    return root


def label_file(path: Path) -> Path:
    pd.DataFrame({"Accession Number": [p[3] for p in PATIENTS],
                  "Patient Name": [p[0] for p in PATIENTS],
                  "as": [k % 2 for k in range(N)]}).to_csv(path, index=False)  # fmt: skip
    return path


def planted(*paths: Path) -> list[str]:
    values = {SALT, ARCHIVE, *(p.as_posix() for p in paths)}
    for name, mrn, dob, acc, uid, date in PATIENTS:
        values |= {name, name.split("^")[0], mrn, dob, acc, uid, date, f"{date}_{acc}"}
    return sorted(values)


def _strings(obj) -> list[str]:
    """Every string (keys and values) inside a checkpoint's weights-only structure."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def is_private(rel: Path) -> bool:
    return "private" in rel.parts or rel.name.endswith(".private.csv")


def scan(work: Path, values: list[str], outputs: dict[str, str], skip=()) -> list[str]:
    """Where each planted value occurs: every file under ``work`` outside ``private/`` (and
    the ``.private.csv`` join file) and the command outputs. Returns 'value in where' lines."""
    found = []
    long = [v for v in values if len(v) >= 8]  # binary payloads: short values match by chance
    n_files = 0
    for p in sorted(work.rglob("*")):
        rel = p.relative_to(work)
        if not p.is_file() or is_private(rel) or rel.parts[0] in skip:
            continue
        n_files += 1
        data = _metadata_bytes(p)
        texts = []
        if p.suffix == ".pt":
            texts = _strings(torch.load(p, map_location="cpu", weights_only=True))
        try:
            texts.append(data.decode())
            check = values
        except UnicodeDecodeError:  # binary (events, onnx, npy header kept whole above)
            check = long
        found += [f"{v!r} in {rel}" for v in check if v.encode() in data]
        found += [f"{v!r} in {rel} (checkpoint)" for v in values for t in texts[:-1] if v in t]
    found += [f"{v!r} in output of {c}" for c, o in outputs.items() for v in values if v in o]
    assert n_files > 20, n_files
    return sorted(set(found))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("salt")
    archive = hospital_archive(tmp / ARCHIVE)
    worklist = hospital_archive(tmp / "worklist_in", PATIENTS[:2])
    return tmp, archive, worklist, label_file(tmp / "labels.csv")


def run_chain(work: Path, archive: Path, worklist: Path, labels: Path, how: str) -> dict:
    """Every command on the archive, the salt given ``how``: config | flag | env."""
    import yaml

    cfg = json.loads(json.dumps(TINY))
    if how == "config":
        cfg["preprocess"]["salt"] = SALT
    (work / "site.yaml").write_text(yaml.safe_dump(cfg))
    c = ["--config", work / "site.yaml"]
    env = {"ECHOCLR_SALT": SALT} if how == "env" else None
    data, runs = work / "data", work / "runs"
    out = {}
    out["preprocess"] = cli("preprocess", "--input", archive, "--output", data, "--labels",
                            labels, *c, "--verbose", *(["--salt", SALT] if how == "flag" else []),
                            env=env)  # fmt: skip
    out["check"] = cli("check", "--data", data, "--task", "as", *c, "-v")
    out["pretrain"] = cli("pretrain", "--method", "echoclr", "--data", data,
                          "--out", runs / "pre", *c, "-v")  # fmt: skip
    out["finetune"] = cli("finetune", "--data", data, "--task", "as", "--init", runs / "pre",
                          "--out", runs / "ft", *c, "-v")  # fmt: skip
    out["evaluate"] = cli("evaluate", runs / "ft", "--data", data, "--out", runs / "eval", *c)
    out["predict"] = cli("predict", runs / "ft", "--input", worklist, "--out", work / "pred.csv",
                         *c, "-v", env=env)  # fmt: skip
    out["report"] = cli("report", runs / "ft", "--out", work / "report.html", "-v")
    out["sweep"] = cli("sweep", "--data", data, "--out", runs / "sweep", *c, "-v")
    out["report sweep"] = cli("report", runs / "sweep", "--out", work / "sweep_report.html")
    out["embed"] = cli("embed", runs / "ft", "--data", data, "--out", work / "emb", "--map",
                       "pca", *c)  # fmt: skip
    out["explain"] = cli("explain", runs / "ft", "--data", data, "--top", "1", "--out",
                         work / "explain", *c)  # fmt: skip
    out["export"] = cli("export", runs / "ft", "--out", work / "model.onnx", *c)
    return out


@pytest.mark.parametrize("how", ["config", pytest.param("flag", marks=pytest.mark.slow),
                                 pytest.param("env", marks=pytest.mark.slow)])  # fmt: skip
def test_no_salt_or_phi_in_any_file_of_any_command(inputs, how, tmp_path):
    """Case 1 (with the salt in a site config given to every command) and the scan."""
    tmp, archive, worklist, labels = inputs
    outputs = run_chain(tmp_path, archive, worklist, labels, how)
    found = scan(tmp_path, planted(archive, worklist, labels), outputs, skip=("site.yaml",))
    assert found == [], "\n".join(found)
    stored = json.loads((tmp_path / "data/private/salt.json").read_text())
    assert stored["salt"] == SALT  # the salt is where it belongs
    cfg_yaml = (tmp_path / "runs/ft/config.yaml").read_text()
    assert ("salt: <private>" in cfg_yaml) == (how == "config")
    events = list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert events, "TensorBoard events are part of the scan"
    assert stat.S_IMODE((tmp_path / "pred.private.csv").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- case 3: order
def cohort_attack(manifest: pd.DataFrame, mrns: list[str], split, seed: int) -> dict[str, str]:
    """What someone who knows the cohort's MRNs (and nothing in ``private/``) guesses: each
    MRN's order key under the public constant ``echoclr``, the seeded split over that order,
    then, split by split, the k-th patient of the manifest is the k-th MRN. {patient_id: MRN}."""
    keys = {m: hash_id("echoclr", "patient", m) for m in mrns}
    pats = pd.DataFrame(index=pd.Index(sorted(mrns, key=keys.get), name="patient_id"))
    split_of = assign_splits(pats, tuple(split), seed, [])
    guess = {}
    for s, rows in manifest.groupby("split", sort=False):
        seen = list(dict.fromkeys(rows["patient_id"]))
        mine = sorted((m for m in mrns if split_of[m] == s), key=keys.get)
        guess |= dict(zip(seen, mine, strict=False))
    return guess


def test_cohort_list_reveals_no_row_order_splits_or_ids(inputs, tmp_path):
    """Case 3: knowing the MRNs re-identified every patient from the manifest's row order and
    splits. Keyed by the dataset's secret salt, the guess is no better than chance."""
    from preprocess_fixtures import small_cfg

    from echoclr_cli.preprocess.run import preprocess

    _, archive, _, _ = inputs
    cfg = small_cfg(salt="a-site-secret-0042", split=(0.5, 0.25, 0.25))  # fixed: no flake
    preprocess(cfg, archive, tmp_path / "data")
    man = pd.read_csv(tmp_path / "data/manifest.csv", dtype=str)
    truth = pd.read_csv(tmp_path / "data/private/id_map.csv", dtype=str)
    truth = dict(zip(truth["hashed"], truth["original"], strict=True))
    guess = cohort_attack(man, [p[1] for p in PATIENTS], cfg.preprocess.split, 0)
    hits = sum(truth[h] == m for h, m in guess.items())
    # chance level (3/12 with this salt); 12/12 when the order was keyed by the constant
    assert len(guess) == N and hits <= N // 3, f"{hits}/{N} patients re-identified"


# --------------------------------------------------------------------------- source_hash
def test_source_hash_links_no_raw_copy_but_finds_duplicates(tmp_path):
    """Case 10, last item: with a raw copy of a file, its sha256 found the row in manifest.csv.
    Now an HMAC with the dataset's salt: no raw hash matches, duplicates still share one."""
    from preprocess_fixtures import small_cfg

    from echoclr_cli.preprocess.run import preprocess

    root = hospital_archive(tmp_path / "raw", PATIENTS[:3])
    dup = root / "copy" / "IM00001"
    dup.parent.mkdir()
    dup.write_bytes((root / PATIENTS[0][1] / f"{PATIENTS[0][5]}_{PATIENTS[0][3]}" / "SE0001"
                     / "IM00001").read_bytes())  # fmt: skip
    preprocess(small_cfg(salt="a-secret"), root, tmp_path / "data")
    man = pd.read_csv(tmp_path / "data/manifest.csv", dtype=str)
    raw = {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("IM00001")}
    assert len(man) == 4 and man["source_hash"].nunique() == 3  # the copy is found
    assert not any(r.startswith(h) for h in man["source_hash"] for r in raw)
    preprocess(small_cfg(salt="other-secret"), root, tmp_path / "other")
    other = pd.read_csv(tmp_path / "other/manifest.csv", dtype=str)
    assert set(other["source_hash"]).isdisjoint(man["source_hash"])  # datasets do not link


# --------------------------------------------------------------------------- case 1, fast
def test_salt_flag_and_config_never_printed_with_verbose(inputs, tmp_path):
    """``--salt X --verbose`` printed the salt in the resolved config; so did a config file."""
    import yaml

    _, archive, _, labels = inputs
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"preprocess": {"salt": SALT}}))
    for args in (["--salt", SALT], ["--config", tmp_path / "site.yaml"]):
        out = cli("preprocess", "--input", archive, "--output", tmp_path / "d", "--labels",
                  labels, "--size", "32", "--workers", "1", "--profile", "demo", "--verbose",
                  "--overwrite", *args)  # fmt: skip
        assert SALT not in out
        assert "salt: <private>" in out


def test_report_names_inputs_by_role_not_path():
    """The report showed the archive folder's last name (``<path>/NAME``) and an older run's
    config.yaml holds the salt and the input in clear: the report names inputs by role."""
    import yaml

    from echoclr_cli.report.facts import redact
    from echoclr_cli.report.sections import config_deviations

    old_run = {"paths": {"data": f"/site/{ARCHIVE}_data", "raw": ARCHIVE, "runs": "runs"},
               "preprocess": {"input": f"/site/{ARCHIVE}", "salt": SALT, "labels": "l.csv"},
               "finetune": {"init": "runs/pretrain/echoclr", "task": "as"}}  # fmt: skip
    shown = yaml.safe_dump(redact(old_run)) + config_deviations(old_run).to_string()
    assert ARCHIVE not in shown and SALT not in shown and "l.csv" not in shown
    assert "<dataset>" in shown and "<archive>" in shown and "<private>" in shown
    assert redact("random", "init") == "random" and redact("runs/x", "init") == "<init run>"


def test_a_redacted_dump_is_not_taken_for_a_salt(inputs, tmp_path):
    """A run's config.yaml reused as --config carries ``salt: <private>``: preprocess refuses it
    in one line instead of hashing every id with that public word."""
    from preprocess_fixtures import small_cfg

    from echoclr_cli.errors import UserError
    from echoclr_cli.preprocess.run import preprocess

    _, archive, _, _ = inputs
    with pytest.raises(UserError, match="preprocess.salt"):
        preprocess(small_cfg(salt="<private>"), archive, tmp_path / "d")
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_config_dumps_redact_the_salt(tmp_path):
    from echoclr_cli.config.load import config_to_dict, save_config
    from echoclr_cli.config.schema import Config

    cfg = Config()
    cfg.preprocess.salt = SALT
    save_config(cfg, tmp_path / "c.yaml")
    assert SALT not in (tmp_path / "c.yaml").read_text()
    assert config_to_dict(cfg)["preprocess"]["salt"] == "<private>"
    assert config_to_dict(cfg, private=True)["preprocess"]["salt"] == SALT  # in memory only
    assert config_to_dict(Config())["preprocess"]["salt"] is None  # none given: nothing hidden


def test_an_older_dataset_is_rekeyed_on_rerun_without_decoding(tmp_path):
    """A dataset made before these changes (plain sha256 source_hash, a journal of version 1,
    rows in the public order): a re-run reuses every video, re-keys source_hash and says that
    the splits changed."""
    from preprocess_fixtures import small_cfg

    from echoclr_cli.data.privacy import source_hash
    from echoclr_cli.io import atomic_write_csv
    from echoclr_cli.preprocess.run import preprocess

    root = hospital_archive(tmp_path / "raw", PATIENTS[:4])
    out, cfg = tmp_path / "data", small_cfg(salt=None)
    preprocess(cfg, root, out)
    man = pd.read_csv(out / "manifest.csv", dtype=str)
    ids = pd.read_csv(out / "private/id_map.csv", dtype=str).set_index("hashed")["original"]
    raw = [hashlib.sha256((root / ids[v]).read_bytes()).hexdigest()[:16] for v in man["video_id"]]
    atomic_write_csv(out / "manifest.csv", man.assign(source_hash=raw))  # as written before
    info = json.loads((out / "dataset.json").read_text())
    info.pop("row_order")
    (out / "dataset.json").write_text(json.dumps(info))
    journal = out / "private/journal.jsonl"
    journal.write_text(journal.read_text().replace('"key": "', '"key": "v1-', 1))
    res = preprocess(cfg, root, out)
    assert res.n_reused == res.n_videos == 4  # not decoded again
    salt = json.loads((out / "private/salt.json").read_text())["salt"]
    new = pd.read_csv(out / "manifest.csv", dtype=str).set_index("video_id")["source_hash"]
    assert {v: source_hash(salt, root / ids[v]) for v in new.index} == new.to_dict()
    assert any("splits differ" in w for w in res.warnings)
    assert not any("splits differ" in w for w in preprocess(cfg, root, out).warnings)
