"""`echoclr report`: self-contained HTML, Markdown and model card for a run and for a sweep.

Runs and sweeps are built from synthetic predictions (no training): the report reads only
files. One test renders the HTML in a real headless browser and checks the screenshot.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from echoclr_cli.clinical.write import write_clinical
from echoclr_cli.config.load import save_config
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.metrics.splits import evaluate_predictions
from echoclr_cli.report.html import build_report, detect_kind, output_paths
from echoclr_cli.report.tripod import TRIPOD_AI
from tests.test_clinical import fake_manifest, fake_sweep, predictions

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def write_dataset(root: Path, man: pd.DataFrame) -> Path:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    man.to_csv(data / "manifest.csv", index=False)
    (data / "dataset.json").write_text(json.dumps({"label_columns": ["as"], "salt_id": "abc123"}))
    pd.DataFrame(
        {"file": ["p/s/x.dcm", "p/s/y.dcm"], "reason": ["not_cine", "not_cine"], "detail": "-"}
    ).to_csv(data / "skipped.csv", index=False)
    return data


def fake_run(root: Path, clinical: bool = True, bootstrap: int = 20) -> tuple[Path, Path]:
    """A fine-tune run dir as `echoclr finetune` leaves it (predictions, metrics, history...)."""
    man = fake_manifest(160)
    data = write_dataset(root, man)
    run = root / "run"
    run.mkdir(parents=True)
    cfg = Config()
    cfg.finetune.task = "as"
    cfg.model.width = 0.125
    cfg.evaluate.bootstrap = bootstrap
    cfg.evaluate.calibrate = "both"
    save_config(cfg, run / "config.yaml")
    preds = {s: df for s, df in predictions(man).items() if s != "train"}
    metrics = evaluate_predictions(preds, cfg)
    (run / "metrics.json").write_text(json.dumps(metrics))
    for split, df in preds.items():
        for level, frame in aggregate_levels(df).items():
            frame.to_csv(run / f"predictions_{split}_{level}.csv", index=False)
    if clinical:
        cfg.evaluate.plots = False
        write_clinical(cfg, preds, run, manifest=man, metrics=metrics)
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.6, 0.5], "val_loss": [0.69, 0.62, 0.6],
                  "val_auroc": [0.6, 0.7, 0.72]}).to_csv(run / "history.csv", index=False)  # fmt: skip
    (run / "finetune.json").write_text(json.dumps({
        "data_dir": str(data.resolve()), "task": "as", "frac": 1.0, "n_train_studies": 40,
        "n_train_studies_available": 40, "n_train_positive_studies": 16, "n_train_videos": 60,
        "pos_weight": 1.5, "best_epoch": 3, "epochs_run": 3, "checkpoint_tested": "best.pt",
    }))  # fmt: skip
    return run, data


def check_self_contained(html: str, n_figures: int) -> None:
    imgs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", html)
    assert len(imgs) == n_figures > 0
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert "url(" not in html


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_run")
    run, data = fake_run(root)
    res = build_report(run, root / "out" / "report.html")
    return root, run, data, res


def test_run_report_is_self_contained_and_complete(run_report):
    root, run, data, res = run_report
    html = res.html.read_text()
    check_self_contained(html, res.n_figures)
    # history, ROC/PR x2, reliability x3, decision curve x2
    assert res.n_figures == 8
    for title in (
        "Data",
        "Recipe",
        "Discrimination",
        "Calibration",
        "Operating points",
        "Subgroups",
        "Reproduce",
        "TRIPOD+AI checklist",
        "Training curves",
    ):
        assert f">{title}</h2>" in html, title  # fmt: skip
    # no machine path, salt or original id in any public output
    for path in (res.html, res.markdown, res.model_card):
        text = path.read_text()
        assert str(root) not in text and str(data) not in text
        assert "p/s/x.dcm" not in text
    # internal and external test side by side; recalibrated rows; operating points from val
    assert "ext_test" in html and "temperature" in html and "platt" in html
    assert "sens95" in html and "youden" in html
    # subgroups by year appear with counts and CIs, and the small-group warning
    sub = html[html.index('id="subgroups"') :]
    assert "by study_year" in sub and "by manufacturer" in sub
    assert re.search(r"<td>2016</td><td>\d+</td><td>\d+</td><td>0\.\d{3} \[", sub)
    assert "estimates unreliable" in sub
    # skipped reasons counted, never listed by file
    assert "not_cine" in html


def test_markdown_figures_and_model_card(run_report):
    _, _, _, res = run_report
    md = res.markdown.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == res.n_figures
    for ref in refs:
        assert (res.markdown.parent / ref).is_file()
    card = json.loads(res.model_card.read_text())
    assert {"intended_use", "data", "metrics", "limitations", "model_details"} <= set(card)
    assert card["metrics"]["test"]["auroc"]["ci_low"] is not None
    assert card["limitations"]  # small test splits are noted


def test_tripod_checklist_has_all_27_items_and_52_rows(run_report):
    _, _, _, res = run_report
    items = [row[0] for row in TRIPOD_AI]
    assert len(items) == 52 and len(set(items)) == 52
    assert len({re.match(r"\d+", i).group() for i in items}) == 27
    html = res.html.read_text()
    section = html[html.index('id="tripod"') :]
    assert section.count("<tr>") == 52 + 1
    assert 's-report">report<' in section and 's-author">author<' in section
    # recalibration was fitted here, so 12f and 24 are covered
    assert re.search(r"<td>12f</td>(<td>[^<]*</td>){3}<td class=\"s-report\">", section)


def test_report_recomputes_clinical_from_predictions_and_options(tmp_path):
    run, data = fake_run(tmp_path, clinical=False)
    res = build_report(run, tmp_path / "r.html", at_threshold=0.3, n_boot=10)
    html = res.html.read_text()
    assert "fixed = 0.3" in html and "by study_year" in html
    # without the dataset: counts from the predictions, no subgroups, said so
    shutil.rmtree(data)
    res = build_report(run, tmp_path / "r2.html", n_boot=0)
    html = res.html.read_text()
    assert "dataset not reachable" in html and "by study_year" not in html


def test_report_refuses_overwrite_and_bad_inputs(run_report, tmp_path):
    _, run, _, res = run_report
    with pytest.raises(UserError, match="already exists"):
        build_report(run, res.html)
    with pytest.raises(UserError, match="must end in .html"):
        build_report(run, tmp_path / "r.txt")
    with pytest.raises(UserError, match="neither metrics.json"):
        detect_kind(tmp_path)
    with pytest.raises(UserError, match="calibrate"):
        build_report(run, tmp_path / "x.html", calibrate="isotonic")
    assert output_paths(Path("a/rep.html"))[1:] == (
        Path("a/rep.md"),
        Path("a/rep_files"),
        Path("a/rep.model_card.json"),
    )


def test_sweep_report_has_label_efficiency_calibration_and_delong(tmp_path):
    selection, _, man = fake_sweep(tmp_path / "sweep")
    cfg = Config()
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["random", "echoclr"]
    cfg.sweep.ratios = [0.5, 1.0]
    save_config(cfg, tmp_path / "sweep" / "sweep.yaml")
    data = write_dataset(tmp_path, man)
    res = build_report(tmp_path / "sweep", tmp_path / "sweep.html", data_dir=data, n_boot=10)
    assert res.kind == "sweep"
    html = res.html.read_text()
    check_self_contained(html, res.n_figures)
    assert "Label efficiency" in html and "Paired comparisons between inits (DeLong)" in html
    assert "as - test: study-level AUROC by init and label ratio" in html
    assert "as - ext_test: brier (calibration) by init and ratio" in html
    paired = html[html.index('id="paired"') :]
    assert paired.count("<td>random</td><td>echoclr</td>") == 4  # 2 ratios x 2 splits
    assert "Featured model: as" in html and "by study_year" in html


def test_cli_report_command(tmp_path):
    from echoclr_cli.cli import app

    run, _ = fake_run(tmp_path, clinical=True, bootstrap=10)
    out = tmp_path / "cli" / "report.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--bootstrap", "5",
                                      "--at-sensitivity", "0.8", "--calibrate", "temperature"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.exists() and "sens80" in out.read_text()
    again = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


def browser() -> str | None:
    return next((b for b in BROWSERS if shutil.which(b)), None)


@pytest.mark.skipif(browser() is None, reason="no headless Chromium (apt-get install "
                    "chromium-headless-shell) to render the report")  # fmt: skip
def test_report_renders_in_a_headless_browser(run_report, tmp_path):
    _, _, _, res = run_report
    shot = tmp_path / "shot.png"
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1200,3000", f"--screenshot={shot}",
           "--host-resolver-rules=MAP * ~NOTFOUND",  # any network fetch would fail
           res.html.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    img = imread(shot)  # (H, W, 3|4) floats
    assert img.shape[0] == 3000 and img.shape[1] == 1200
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05  # not a blank page
    # figures are drawn: many distinct colours (the text-only page has few)
    colours = np.unique((img[..., :3] * 31).astype(int).reshape(-1, 3), axis=0)
    assert len(colours) > 200
    dom = subprocess.run([*cmd[:-2], "--dump-dom", res.html.resolve().as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert dom.count("<img") == res.n_figures and "TRIPOD+AI checklist" in dom
