"""Tools delete only what they wrote (issue 23, case 8 and case 10's first bullet).

The attacks: ``evaluate`` re-run into its earlier ``--out`` deleted the whole folder, a file
the user had added there included; ``report`` overwrote an existing ``<name>_files/`` folder
without ``--overwrite``. ``evaluate``, ``report``, ``export`` and ``embed`` now write through
``io.replace_own_files``: each replaces the files it listed in ``.echoclr-files.json`` and
never removes another file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import make_dataset, tiny_finetune_config

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.io import OWN_FILES, read_own_files, replace_own_files

USER_TEXT = "my notes about this evaluation\n"


@dataclass
class Run:
    data: Path
    finetune: Path
    cfg: Config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The smallest fine-tuned run (8 studies, one epoch, no bootstrap)."""
    from echoclr_cli.finetune.run import run_finetune

    root = tmp_path_factory.mktemp("own_files")
    data = make_dataset(root, n_studies=8)
    cfg = tiny_finetune_config(epochs=1, evaluate={"bootstrap": 0, "clips_per_video": 1})
    run_finetune(cfg, data, root / "ft")
    return Run(data, root / "ft", cfg)


def user_file(folder: Path, name: str = "notes.txt") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(USER_TEXT)
    return path


# --------------------------------------------------------------------------- the helper
def _writer(files: dict[str, str]):
    def fill(stage: Path) -> list[str]:
        for rel, text in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_text(text)
        return sorted(files)

    return fill


def test_replace_own_files_removes_only_its_own_unchanged_files(tmp_path):
    out = tmp_path / "out"
    replace_own_files(out, "tool", _writer({"a.txt": "1", "sub/b.txt": "2", "c.txt": "3"}))
    mine = user_file(out / "sub", "user.txt")
    (out / "c.txt").write_text("edited by the user")  # ours once, changed since
    rels, done = replace_own_files(out, "tool", _writer({"a.txt": "new"}))
    assert rels == ["a.txt"] and (out / "a.txt").read_text() == "new"
    assert not (out / "sub" / "b.txt").exists() and done.removed == ["sub/b.txt"]
    assert (out / "c.txt").read_text() == "edited by the user" and done.kept == ["c.txt"]
    assert mine.read_text() == USER_TEXT
    assert list(read_own_files(out)["owners"]["tool"]) == ["a.txt"]
    assert not [p for p in out.iterdir() if p.name.startswith(".echoclr-stage")]


def test_a_tampered_index_cannot_make_it_delete_elsewhere(tmp_path):
    out, outside = tmp_path / "out", user_file(tmp_path, "precious.txt")
    inside = user_file(out, "user.txt")
    digest = hashlib.sha256(USER_TEXT.encode()).hexdigest()
    index = {"format": "echoclr-own-files",
             "owners": {"tool": {"../precious.txt": digest, str(outside): digest,
                                 "user.txt": "0" * 64}}}  # fmt: skip
    (out / OWN_FILES).write_text(json.dumps(index))
    replace_own_files(out, "tool", _writer({"a.txt": "1"}))
    assert outside.read_text() == USER_TEXT and inside.read_text() == USER_TEXT


def test_a_file_of_someone_else_with_our_name_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    theirs = user_file(out, "a.txt")
    with pytest.raises(UserError, match="a.txt already exists and was not written by tool"):
        replace_own_files(out, "tool", _writer({"a.txt": "1"}))
    assert theirs.read_text() == USER_TEXT
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # no index, no staging folder
    with pytest.raises(UserError, match="-> move it away"):
        replace_own_files(out, "tool", _writer({"a.txt": "1"}), fix="move it away")
    replace_own_files(out, "tool", _writer({"a.txt": "1"}), overwrite=True)
    assert theirs.read_text() == "1"


def test_a_failure_while_filling_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    replace_own_files(out, "tool", _writer({"a.txt": "1"}))
    before = sorted(p.name for p in out.iterdir())

    def broken(stage: Path) -> None:
        (stage / "a.txt").write_text("half")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        replace_own_files(out, "tool", broken)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "a.txt").read_text() == "1"


# --------------------------------------------------------------------------- the commands
@pytest.mark.slow  # a trained run: the CI checks are the fast ones
def test_evaluate_again_into_its_out_keeps_the_users_file(runs, tmp_path):
    """Case 8: today's code rmtree'd the folder, the user's file with it."""
    from echoclr_cli.inference.evaluate import evaluate_run

    out = tmp_path / "ev"
    first = evaluate_run(runs.cfg, runs.finetune, runs.data, ["test"], out_dir=out)
    notes = user_file(out)
    (out / "plots").mkdir(exist_ok=True)
    extra = user_file(out / "plots", "my_figure.png")
    again = evaluate_run(runs.cfg, runs.finetune, runs.data, ["test"], out_dir=out)
    assert notes.read_text() == USER_TEXT and extra.read_text() == USER_TEXT
    assert {p.name for p in again.files} == {p.name for p in first.files}
    own = read_own_files(out)["owners"]["evaluate"]
    assert "notes.txt" not in own and "eval.json" in own


def test_report_refuses_an_existing_files_folder_without_overwrite(tmp_path):
    """Case 10: the report replaced <name>_files/ with no --overwrite."""
    from echoclr_cli.report.html import build_report

    out = tmp_path / "report.html"
    figure = user_file(tmp_path / "report_files", "figure.png")
    with pytest.raises(UserError, match="report_files already exists") as e:
        build_report(tmp_path / "any_run", out)  # refused before the run is read
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    assert not out.exists() and figure.read_text() == USER_TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report_files"]


@pytest.mark.slow  # a trained run: the CI checks are the fast ones
def test_report_overwrite_replaces_its_own_files_only(runs, tmp_path):
    from echoclr_cli.report.html import build_report

    out = tmp_path / "report.html"
    figure = user_file(tmp_path / "report_files", "figure.png")
    build_report(runs.finetune, out, data_dir=runs.data, overwrite=True)
    assert out.is_file() and figure.read_text() == USER_TEXT  # --overwrite: ours only
    own = read_own_files(tmp_path)["owners"]["report:report.html"]
    assert "report.html" in own and "report_files/figure.png" not in own


@pytest.mark.slow  # a trained run: the CI checks are the fast ones
def test_export_replaces_its_own_files_and_nothing_else(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from echoclr_cli.inference.export import export_run

    out = tmp_path / "model.onnx"
    notes = user_file(tmp_path)
    export_run(runs.cfg, run_dir=runs.finetune, fmt="onnx", out=out)
    other = tmp_path / "other.onnx"
    export_run(runs.cfg, run_dir=runs.finetune, fmt="onnx", out=other)
    export_run(runs.cfg, run_dir=runs.finetune, fmt="onnx", out=out, overwrite=True)
    assert notes.read_text() == USER_TEXT and other.is_file() and out.is_file()
    owners = read_own_files(tmp_path)["owners"]
    assert set(owners["export:model.onnx"]) == {"model.onnx", "model.onnx.json"}
    assert set(owners["export:other.onnx"]) == {"other.onnx", "other.onnx.json"}


@pytest.mark.slow  # a trained run: the CI checks are the fast ones
def test_embed_overwrite_removes_its_stale_files_and_keeps_the_users(runs, tmp_path):
    from echoclr_cli.analysis.embed import run_embed

    out = tmp_path / "emb"
    run_embed(runs.cfg, sources=["random", runs.finetune], data_dir=runs.data, out_dir=out,
              splits=["train"], map_method="pca")  # fmt: skip
    notes = user_file(out / "random")
    run_embed(runs.cfg, sources=[runs.finetune], data_dir=runs.data, out_dir=out,
              splits=["train"], map_method="pca", overwrite=True)  # fmt: skip
    assert notes.read_text() == USER_TEXT  # the user's file in a folder embed made
    assert sorted(p.name for p in (out / "random").iterdir()) == ["notes.txt"]  # ours: gone
    assert (out / runs.finetune.name / "embeddings_video.npy").is_file()
