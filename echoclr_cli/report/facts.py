"""What `echoclr report` reads from a fine-tune run dir (and its dataset when reachable):
:class:`RunFacts`, and the small formatting and hashing helpers the report sections share."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from echoclr_cli.clinical.core import ClinicalOptions
from echoclr_cli.clinical.write import clinical_metrics
from echoclr_cli.errors import UserError
from echoclr_cli.io import read_csv, sha256_file

SPLIT_ORDER = ("train", "val", "test", "ext_test")
LEVELS = ("study", "video")


# --------------------------------------------------------------------------- small helpers
def png_of(draw: Callable[[Path], Any]) -> bytes | None:
    """Run a plotting function that writes a PNG to the given path; return its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        written = draw(path)
        target = Path(written) if written is not None else path
        return target.read_bytes() if target.exists() else None


def file_sha256(path: Path) -> str | None:
    path = Path(path)
    return sha256_file(path) if path.is_file() else None


def code_hash() -> str:
    """sha256 over the package's own ``*.py`` sources (sorted by relative path)."""
    root = Path(__file__).resolve().parents[1]  # echoclr_cli/ (this module is in report/)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# A report names its inputs by role, never by path or folder name (issue 23): the key of a
# config value -> the role shown for it.
ROLES = {
    "data": "dataset", "output": "dataset", "raw": "archive", "input": "archive",
    "external_input": "external archive", "labels": "label file", "runs": "runs folder",
    "init": "init run", "weights": "weights file", "pretrain_dir": "pretrain runs",
    "view_model": "view model",
}  # fmt: skip


def public_path(path: Path | str, role: str) -> str:
    """How a report names an input: its role (``archive``, ``dataset``), never its path."""
    return role


def redact(obj: Any, key: str = "") -> Any:
    """A config dict (or one value of it, ``key`` its leaf name) as a report shows it: the
    config layer's redaction (salt and raw inputs ``<private>``, also for an older run's file
    that holds them in clear), and every path named by its role (:data:`ROLES`)."""
    from echoclr_cli.config.load import PRIVATE, redact_config

    if isinstance(obj, dict):
        obj = redact_config(obj)
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, key) for v in obj]
    if not isinstance(obj, str) or obj == PRIVATE:
        return obj
    if key == "salt":  # a leaf taken out of a config (the recipe table)
        return PRIVATE
    if key in ROLES and obj not in ("random", "kinetics", "auto", "none"):
        return f"<{public_path(obj, ROLES[key])}>"
    if "/" in obj or "\\" in obj:
        return f"<{public_path(obj, 'path')}>"
    return obj


def load_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e})", fix="re-run the step that wrote it"
        ) from None


def fmt_ci(cell: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``{"value", "ci_low", "ci_high"}`` -> ``"0.812 [0.750, 0.870]"`` ("-" when undefined)."""

    def num(x: Any) -> float | None:
        return None if x is None or not np.isfinite(float(x)) else float(x)

    if not cell or num(cell.get("value")) is None:
        return "-"
    v, lo, hi = num(cell["value"]), num(cell.get("ci_low")), num(cell.get("ci_high"))
    text = f"{v:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def ordered(splits) -> list[str]:
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(splits, key=lambda s: (rank.get(s, len(rank)), s))


# --------------------------------------------------------------------------- facts of a run
@dataclass
class RunFacts:
    """Everything the report reads from a run dir (and its dataset when reachable)."""

    run_dir: Path
    task: str
    cfg: dict[str, Any]
    metrics: dict[str, Any]
    finetune: dict[str, Any]
    init: dict[str, Any]
    predictions: dict[str, dict[str, pd.DataFrame]]
    clinical: dict[str, Any]
    opts: ClinicalOptions
    data_dir: Path | None = None
    manifest: pd.DataFrame | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    skipped: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        return ordered(k for k in self.metrics if k not in ("thresholds", "reasons", "clinical"))

    @classmethod
    def load(
        cls,
        run_dir: Path,
        data_dir: Path | None,
        options: Mapping[str, Any],
        say: Callable[[str], None],
    ) -> RunFacts:
        from echoclr_cli.config.schema import Config

        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        cfg_dict = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        metrics = load_json(run_dir / "metrics.json")
        ft = load_json(run_dir / "finetune.json")
        task = (cfg_dict.get("finetune") or {}).get("task") or ft.get("task") or "?"
        notes: list[str] = []
        try:
            opts = ClinicalOptions.from_config(Config.model_validate(cfg_dict or {}), **options)
        except UserError:
            raise
        except Exception as e:  # an older config: defaults, said in the report
            notes.append(f"config.yaml not readable as a current config ({type(e).__name__})")
            opts = ClinicalOptions(**{k: v for k, v in options.items() if v is not None})
        preds: dict[str, dict[str, pd.DataFrame]] = {}
        for split in SPLIT_ORDER:
            for level in LEVELS:
                p = run_dir / f"predictions_{split}_{level}.csv"
                if p.exists():
                    preds.setdefault(split, {})[level] = read_csv(p)
        if not preds:
            raise UserError(
                f"{run_dir} has no predictions_<split>_<level>.csv",
                fix="evaluate the run first (`echoclr evaluate RUN`)",
            )
        facts = cls(run_dir, task, cfg_dict or {}, metrics, ft, load_json(run_dir / "init.json"),
                    preds, {}, opts, notes=notes)  # fmt: skip
        facts._load_data(data_dir)
        overridden = any(v is not None for v in options.values())
        if "clinical" in metrics and not overridden:
            facts.clinical = metrics["clinical"]
        else:
            say(f"clinical metrics of {run_dir.name} from its prediction files")
            video = {s: lv["video"] for s, lv in preds.items() if "video" in lv}
            man = facts.manifest
            if man is not None:
                ids = set().union(*(set(df["video_id"].astype(str)) for df in video.values()))
                man = man[man["video_id"].astype(str).isin(ids)]
            facts.clinical = clinical_metrics(video, opts, man)
        return facts

    def _load_data(self, data_dir: Path | None) -> None:
        from echoclr_cli.data.manifest import load_manifest

        recorded = self.finetune.get("data_dir")
        d = Path(data_dir) if data_dir is not None else Path(recorded) if recorded else None
        if d is None or not (d / "manifest.csv").exists():
            self.notes.append(
                "dataset not reachable: counts come from the prediction files, no subgroups "
                "(pass --data DATA)"
            )
            return
        self.data_dir = d
        man = load_manifest(d, check_files=False)
        self.manifest = man
        self.dataset = load_json(d / "dataset.json")
        if (d / "skipped.csv").exists():
            self.skipped = read_csv(d / "skipped.csv")

    def commands(self) -> list[str]:
        run = self.run_dir.name
        ft = self.cfg.get("finetune", {})
        init = ft.get("init", "random")
        init = "INIT_RUN" if "/" in str(init) else init  # a run's path: named by its role
        return [
            f"echoclr finetune --data DATA --task {self.task} --init {init} "
            f"--frac {ft.get('frac', 1.0)} --config {run}/config.yaml --out {run}",
            f"echoclr evaluate {run} --data DATA --split {','.join(self.splits[1:] or ['test'])}",
            f"echoclr report {run} --data DATA --out report.html",
        ]
