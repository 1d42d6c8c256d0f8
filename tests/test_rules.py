"""Label rules: the safe grammar (precedence, parentheses, every operator, three-valued logic),
hostile input refused with one line, presets, long tables, the counts in labels_report.json."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import dicom_dataset, fan_video, save, small_cfg
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.data import label_file, label_issues, presets, rules
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess.run import preprocess


def _labels(rule: str, **cols) -> list:
    df = pd.DataFrame({k: [str(v) for v in vals] for k, vals in cols.items()})
    out = rules.evaluate(rules.parse_rule(rule), df).values
    return [None if np.isnan(v) else int(v) for v in out]


# --------------------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    "op, expected", [(">=", [0, 1, 1]), (">", [0, 0, 1]), ("<=", [1, 1, 0]),
                     ("<", [1, 0, 0]), ("==", [0, 1, 0]), ("!=", [1, 0, 1])],
)  # fmt: skip
def test_every_operator(op, expected):
    assert _labels(f"y = x {op} 4", x=[3, 4, 5]) == expected
    assert _labels(f"y = 4 {op} x", x=[3, 4, 5]) == [
        {">=": int(4 >= v), ">": int(4 > v), "<=": int(4 <= v), "<": int(4 < v),
         "==": int(4 == v), "!=": int(4 != v)}[op] for v in (3, 4, 5)
    ]  # fmt: skip


def test_precedence_and_parentheses():
    # and binds tighter than or: a or (b and c)
    cols = {"a": [1, 0, 0], "b": [0, 1, 1], "c": [0, 0, 1]}
    assert _labels("y = a == 1 or b == 1 and c == 1", **cols) == [1, 0, 1]
    assert _labels("y = (a == 1 or b == 1) and c == 1", **cols) == [0, 0, 1]
    assert _labels("y = not a == 1 and b == 1", **cols) == [0, 1, 1]
    assert _labels("y = not (a == 1 or b == 1)", **cols) == [0, 0, 0]
    assert _labels("Y = A == 1 OR b == 1 AND NOT c == 1", A=[0, 0, 0], b=[0, 1, 1],
                   c=[0, 0, 1]) == [0, 1, 0]  # fmt: skip
    r = rules.parse_rule("y = a == 1 or b == 1 and c == 1")
    assert r.text() == "y = a == 1 or (b == 1 and c == 1)"
    assert [c.text() for c in r.clauses] == ["a == 1", "b == 1 and c == 1"]


def test_three_valued_logic_missing_is_unknown_never_negative():
    cols = {"v": ["4.5", "", "3", "", "3"], "g": ["", "45", "", "", "30"]}
    # or: true if any clause true; false only if all known false; else unknown
    assert _labels("y = v >= 4 or g >= 40", **cols) == [1, 1, None, None, 0]
    # and: false if any clause false; true only if all known true
    assert _labels("y = v >= 4 and g >= 40", v=["4.5", "", "3", "5"], g=["", "45", "", "50"]) == [
        None, None, 0, 1]  # fmt: skip
    assert _labels("y = not v >= 4", v=["5", "", "3"]) == [0, None, 1]
    for na in ("NA", "n/a", "null", "nan", " "):
        assert _labels("y = v > 1", v=[na]) == [None]


def test_text_comparison_and_quoted_columns():
    assert _labels("y = sex == 'f'", sex=["F", "M", ""]) == [1, 0, None]
    assert _labels('y = sex != "F"', sex=["F", "m"]) == [0, 1]
    df = pd.DataFrame({"AV Vmax (m/s)": ["4.1", "2"]})
    r = rules.parse_rule("as = `AV Vmax (m/s)` >= 4")
    assert rules.evaluate(r, df).values.tolist() == [1.0, 0.0]
    assert r.text() == "as = `AV Vmax (m/s)` >= 4"
    assert _labels("y = x >= -1.5e0", x=[-2, -1]) == [0, 1]


def test_not_a_number_is_unknown_and_reported():
    df = pd.DataFrame({"v": ["5", "moderate", "2"], "g": ["", "", "50"]})
    res = rules.evaluate(rules.parse_rule("y = v >= 4 or g >= 40"), df)
    assert res.values.tolist()[0] == 1.0 and np.isnan(res.values[1]) and res.values[2] == 1.0
    assert res.bad.tolist() == [False, True, False] and res.bad_columns == {1: "v"}
    assert res.report["not_numeric"] == {"v": 1, "g": 0}


# --------------------------------------------------------------------------- hostile input
HOSTILE = [
    "x=__import__('os').system('touch PWNED')",
    "__import__('os').system('touch PWNED')",
    "x=os.system('touch PWNED')",
    "x=a.__class__ >= 1",
    "x=open('f') == 1",
    "x=exec('1') == 1",
    "x=a >= 1; import os",
    "x=a >= 1 or `b` == 'c' + 'd'",
    "x=lambda: 1",
    "x=[a] >= 1",
    "x=a >= {1}",
    "x=a >= 1 and",
    "x=(a >= 1",
    "x=a >= 1)",
    "x=a = 1",
    "x=a >> 1",
    "x=1 >= 2",
    "x='a' == 'b'",
    "x=a >= 'b'",
    "x=a == 1 == 2",
    "x=a >= 1e",
    "x='unterminated",
    "x=`unterminated",
    "x=",
    "=a >= 1",
    "x=" + "(" * 200 + "a >= 1" + ")" * 200,
    "x=" + "not " * 200 + "a >= 1",
    "x=" + " or ".join(["a >= 1"] * 500),
    "x=a >= 1\x00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_rules_refused_with_one_line_never_run(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        rules.parse_rule(text)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("label rule '")
    assert len(e.value.message) < 300
    assert not (tmp_path / "PWNED").exists()


def test_error_names_the_position():
    with pytest.raises(UserError, match=r"expected a comparison .* after '__import__', got '\(' "
                       r"at position 13"):  # fmt: skip
        rules.parse_rule("x=__import__('os')")
    with pytest.raises(UserError, match=r"unexpected character '\.' at position 19"):
        rules.parse_rule("x=__import__('os').system('x')")
    with pytest.raises(UserError, match=r"unexpected character '\.' at position 5"):
        rules.parse_rule("x=os.system")
    with pytest.raises(UserError, match="longer than 1000 characters"):
        rules.parse_rule("x=" + "a" * 2000 + " >= 1")
    with pytest.raises(UserError, match="nested deeper than 20"):
        rules.parse_rule("x=" + "(" * 30 + "a >= 1" + ")" * 30)


def test_no_eval_anywhere():
    import re

    for module in (rules, presets):
        src = Path(module.__file__).read_text()
        assert not re.search(r"(?<![\w.])(eval|exec|compile|getattr|__import__)\(", src)
        assert "literal_eval" not in src and "import ast" not in src


def test_missing_column_named():
    r = presets.build_rules(["as=AV_Vmax >= 4 or ava <= 1"], [])
    with pytest.raises(UserError, match=r"t.csv: label rule 'as=AV_Vmax.*names column\(s\) "
                       r"\['ava'\].*did you mean \['AVA'\]"):  # fmt: skip
        rules.check_columns(r, ["AV_Vmax", "AVA"], "t.csv")
    rules.check_columns(r, ["AV_Vmax", "ava"], "t.csv")


def test_same_label_twice_refused():
    with pytest.raises(UserError, match="label 'as' is defined twice"):
        presets.build_rules(["as=a >= 1"], ["as:vmax=V"])


# --------------------------------------------------------------------------- presets
def test_as_preset_guideline_thresholds():
    r = presets.expand_preset("as:vmax=AV_Vmax,mean_gradient=AV MG,ava=AVA")
    assert r.label == "as"
    assert r.text() == "as = AV_Vmax >= 4 or `AV MG` >= 40 or AVA <= 1"
    df = pd.DataFrame({"AV_Vmax": ["4.0", "3.9", "", "3", ""],
                       "AV MG": ["", "40", "39", "20", ""],
                       "AVA": ["", "", "1.1", "0.9", "1.5"]})  # fmt: skip
    out = rules.evaluate(r, df).values.tolist()
    # row 2: Vmax missing -> unknown although MG and AVA are below the thresholds
    assert [out[i] for i in (0, 1, 3)] == [1.0, 1.0, 1.0] and np.isnan(out[2]) and np.isnan(out[4])
    full = pd.DataFrame({"AV_Vmax": ["3"], "AV MG": ["39"], "AVA": ["1.1"]})
    assert rules.evaluate(r, full).values.tolist() == [0.0]
    # a subset of criteria, renamed label, cm/s threshold
    r2 = presets.expand_preset("as:vmax=V,vmax_min=400,label=as_severe")
    assert r2.text() == "as_severe = V >= 400"


def test_lvh_preset_by_sex_unknown_sex_is_unknown():
    r = presets.expand_preset("lvh:lvmi=LVMI,sex=Sex")
    df = pd.DataFrame({"LVMI": ["96", "96", "116", "100", "200", ""],
                       "Sex": ["F", "M", "m", "O", "", "F"]})  # fmt: skip
    res = rules.evaluate(r, df)
    got = [None if np.isnan(v) else int(v) for v in res.values]
    assert got == [1, 0, 1, None, None, None]
    assert res.report["guard_unknown"] == 1  # 'O' would have been a negative without the guard
    r2 = presets.expand_preset("lvh:lvmi=LVMI,sex=Sex,female=Female,male=Male")
    df2 = pd.DataFrame({"LVMI": ["96"], "Sex": ["female"]})
    assert rules.evaluate(r2, df2).values.tolist() == [1.0]


@pytest.mark.parametrize(
    "spec, match",
    [("lvh:lvmi=LVMI", "needs your column name"), ("as:", "needs your column name"),
     ("as:vmax", "is not KEY=VALUE"), ("as:speed=V", "is not KEY=VALUE"),
     ("ef:x=Y", "unknown preset"), ("as:vmax=V,vmax_min=four", "not a number")],
)  # fmt: skip
def test_preset_errors(spec, match):
    with pytest.raises(UserError, match=match):
        presets.expand_preset(spec)


# --------------------------------------------------------------------------- long tables
def _long_table(path: Path) -> Path:
    rows = [
        ("S1", "vmax", "4.4"), ("S1", "mg", "30"),
        ("S2", "vmax", "3.0"), ("S2", "mg", "20"), ("S2", "ava", "1.6"),
        ("S3", "vmax", "3.8"), ("S3", "vmax", "4.4"),  # duplicate -> mean 4.1 -> positive
        ("S4", "mg", "25"),  # vmax, ava missing -> unknown
        ("S5", "lvef", "60"),  # only an unrelated measurement -> unknown
        ("S6", "vmax", "high"),  # not a number -> unknown + bad_value
    ]  # fmt: skip
    pd.DataFrame(rows, columns=["study_id", "measurement", "value"]).to_csv(path, index=False)
    return path


def test_long_table_pivot_duplicates_mean_and_counts(tmp_path):
    path = _long_table(tmp_path / "m.csv")
    cfg = small_cfg(label_rules=["as=vmax >= 4 or mg >= 40 or ava <= 1.0"]).preprocess
    lf = label_file.read_label_file(cfg, path, "salt")
    from echoclr_cli.data.privacy import hash_id

    got = {
        s: lf.table[hash_id("salt", "study", s)]["as"] for s in ("S1", "S2", "S3", "S4", "S5", "S6")
    }
    assert got["S1"] == 1 and got["S2"] == 0 and got["S3"] == 1
    assert all(np.isnan(got[s]) for s in ("S4", "S5", "S6"))
    rep = label_issues.issues_report(lf.issues, allowed=False)
    (rule,) = rep["rules"]
    assert (rule["positive"], rule["negative"], rule["unknown"], rule["rows"]) == (2, 1, 3, 6)
    assert [c["fired"] for c in rule["clauses"]] == [2, 0, 0]
    (table,) = rep["tables"]
    assert table["long"] and table["duplicates"] == 1 and table["ids"] == 6
    assert table["rows_other_measurements"] == 1  # lvef is not read
    assert rep["issues"]["bad_value"]["count"] == 1 and rep["n_errors"] == 1
    lines = label_issues.issue_lines(lf.issues)
    assert any("rule as" in ln and "2 positive, 1 negative, 3 unknown" in ln for ln in lines)
    # the private rows hold the id and value; the public report never does
    priv = label_issues.private_issue_rows(lf.issues)
    bad = priv[priv["kind"] == "bad_value"]
    assert bad["original_id"].tolist() == ["S6"] and bad["value"].tolist() == ["high"]
    # S4, S5: unknown because a measurement is missing (empty): counted, not an error
    assert priv.loc[priv["kind"] == "empty_value", "original_id"].tolist() == ["S4", "S5"]
    assert rep["issues"]["empty_value"]["count"] == 2 and not rep["issues"]["empty_value"]["error"]
    assert "S6" not in json.dumps(rep) and "high" not in json.dumps(rep)


def test_long_table_flag_and_errors(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"study_id": ["A", "A"], "what": ["v", "g"], "num": ["5", "1"]}).to_csv(
        path, index=False
    )
    cfg = small_cfg(label_rules=["y=v >= 4"], labels_long="what,num").preprocess
    lf = label_file.read_label_file(cfg, path, "s")
    assert list(lf.table.values())[0]["y"] == 1.0
    with pytest.raises(UserError, match="must name 2 columns"):
        label_file.read_label_file(small_cfg(label_rules=["y=v>1"], labels_long="what,x").preprocess,
                               path, "s")  # fmt: skip
    # read as wide (no): 'v' is not a column
    with pytest.raises(UserError, match=r"names column\(s\) \['v'\]"):
        label_file.read_label_file(small_cfg(label_rules=["y=v>1"], labels_long="no").preprocess,
                               path, "s")  # fmt: skip
    auto = tmp_path / "auto.csv"
    _long_table(auto)
    with pytest.raises(UserError, match="long table .* needs label rules"):
        label_file.read_label_file(small_cfg().preprocess, auto, "s")


def test_wide_table_rules_and_label_map_together(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame({"study_id": ["A", "B", "C"], "vmax": ["4.5", "2", ""],
                  "sev": ["severe", "mild", ""]}).to_csv(path, index=False)  # fmt: skip
    cfg = small_cfg(label_rules=["as=vmax >= 4"], label_map={"sev": "sev==severe"}).preprocess
    lf = label_file.read_label_file(cfg, path, "s")
    assert lf.label_columns == ["sev", "as"]
    vals = [(m["as"], m["sev"]) for m in lf.table.values()]
    assert vals[0] == (1.0, 1.0) and vals[1] == (0.0, 0.0) and np.isnan(vals[2][0])


# --------------------------------------------------------------------------- end to end
def _tree(root: Path) -> None:
    frames, _ = fan_video(10, 48, 64, seed=3)
    for i in range(4):
        save(dicom_dataset(frames, patient=f"P{i}", study=f"1.2.{i}"), root / f"P{i}" / "a.dcm")


def test_preprocess_with_long_table_and_preset(tmp_path):
    raw = tmp_path / "raw"
    _tree(raw)
    meas = tmp_path / "meas.csv"
    pd.DataFrame(
        [("1.2.0", "AV_Vmax", "4.3"), ("1.2.1", "AV_Vmax", "2.0"), ("1.2.1", "AVA", "2.0"),
         ("1.2.2", "AVA", "0.8"), ("1.2.3", "LVEF", "55")],
        columns=["study_id", "Calc", "CalcValue"],
    ).to_csv(meas, index=False)  # fmt: skip
    cfg = small_cfg(labels=meas, label_presets=["as:vmax=AV_Vmax,ava=AVA"])
    res = preprocess(cfg, raw, tmp_path / "data")
    man = pd.read_csv(tmp_path / "data" / "manifest.csv")
    assert sorted(man["as"].fillna(-1).tolist()) == [-1, 0, 1, 1]
    rep = json.loads((tmp_path / "data" / "labels_report.json").read_text())
    (rule,) = rep["rules"]
    assert (rule["positive"], rule["negative"], rule["unknown"]) == (2, 1, 1)
    assert [c["fired"] for c in rule["clauses"]] == [1, 1]
    assert any("rule as" in w for w in res.warnings)


def test_cli_malformed_rule_and_missing_column_before_any_decoding(tmp_path):
    raw = tmp_path / "raw"
    _tree(raw)
    lab = tmp_path / "l.csv"
    pd.DataFrame({"study_id": ["1.2.0"], "vmax": ["5"]}).to_csv(lab, index=False)
    runner = CliRunner()
    base = ["preprocess", "--input", str(raw), "--output", str(tmp_path / "d"), "--labels",
            str(lab), "--workers", "1"]  # fmt: skip
    for rule, msg in (("as=vmax >= 4 or", "expected a column"),
                      ("as=__import__('os').system('x')", "unexpected character '.' at position 20"),
                      ("as=vmax >= 4 or ava <= 1", "names column(s) ['ava']")):  # fmt: skip
        res = runner.invoke(cli.app, [*base, "--label-rule", rule])
        assert res.exit_code == 1, res.output
        assert msg in " ".join(res.output.split())
        assert "Traceback" not in res.output
        assert not (tmp_path / "d").exists()  # nothing decoded, nothing written
    res = runner.invoke(cli.app, [*base, "--label-preset", "lvh:lvmi=LVMI"])
    assert res.exit_code == 1 and "needs your column name" in " ".join(res.output.split())


def test_rules_without_a_table_refused(tmp_path):
    raw = tmp_path / "raw"
    _tree(raw)
    with pytest.raises(UserError, match="label rules need a measurement table"):
        preprocess(small_cfg(label_rules=["y=a>1"]), raw, tmp_path / "d")
    assert not (tmp_path / "d").exists()
