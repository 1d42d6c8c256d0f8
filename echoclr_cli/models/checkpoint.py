"""Checkpoint files: what a checkpoint holds, writing it atomically, reading any .pt safely.

Every ``torch.load`` of the package is :func:`safe_load` (``weights_only=True``): a file that
would need arbitrary Python objects to unpickle (and could run code while loading) is refused
with one line naming it, and its payload never runs.

Our checkpoints hold only tensors, numbers, strings, None and lists/dicts of them, so
``torch.load(path, weights_only=True)`` reads them with no allow-list. The RNG states, which
Python and numpy give as tuples holding a numpy array, are stored as plain dicts of tensors and
numbers (:func:`capture_rng`) and turned back exactly (:func:`restore_rng`): resume stays bitwise
exact. Checkpoints of the previous format (numpy / python RNG state pickled as numpy arrays and
tuples) still load: the only non-plain types they hold (``numpy.ndarray`` of ``uint32``, its
dtype and numpy's array reconstructor) are allow-listed for the duration of one load, never for
the process, and their RNG states are converted on load (:func:`load_checkpoint`).

Also here: the run-dir safety rule (:func:`prepare_run_dir`), the resume state
(:class:`TrainState`, :func:`state_from_checkpoint`) and :data:`RESUME_MUTABLE_KEYS`, the config
keys that may change between a run and its resume.

Imports torch, numpy, ``config``, ``errors``, ``io`` and ``runtime``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from echoclr_cli import __version__, rundir
from echoclr_cli.config.load import diff_configs, redact_config
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write

FORMAT = "echoclr-checkpoint"
# Config keys (prefixes) that may change between a run and its resume: where things live, how
# many workers/threads, the device, compilation, the profile name. ``<section>.epochs`` may grow
# as well (see ``resume_config_changes``). A sweep extends this set with its grid keys.
RESUME_MUTABLE_KEYS = (
    "runtime.workers",
    "runtime.device",
    "runtime.threads",
    "runtime.compile",
    "paths.",
    "profile",
)
# Output files of a run that --overwrite removes (never the directory or user files).
RUN_OUTPUTS = ("history.csv", "metrics.json", "config.yaml", "init.json")


# --------------------------------------------------------------------------- safe loading
def _legacy_numpy_globals() -> list[Any]:
    """The numpy types inside previous-format RNG states (inert uint32 arrays)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: no names to give
        return []


def safe_load(path: Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; UserError (one line naming ``path``) when the
    file is missing, unreadable, or needs arbitrary objects to unpickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}", fix="check the run dir / path")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or needs code to unpickle
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            names = _unsafe_globals(path)
            named = f" ({', '.join(names[:3])})" if names else ""
            raise UserError(
                f"refusing to load {what} {path}: it holds pickled Python objects{named} that "
                "could run code while loading; echoclr reads only tensors and plain data",
                fix="use a checkpoint written by echoclr or a plain state dict (torch.save of "
                "tensors); if you trust the file, re-save its tensors as a state dict",
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        raise UserError(
            f"cannot read {what} {path} ({type(e).__name__}: {first})",
            fix="use another checkpoint of the run (checkpoints/epoch_*.pt) or retrain",
        ) from None


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """One of our checkpoints (any format version), RNG states in the current format."""
    path = Path(path)
    ck = safe_load(path, map_location, "checkpoint")
    if not isinstance(ck, dict) or "model" not in ck:
        raise UserError(
            f"{path} is not an echoclr checkpoint", fix="pass a run dir or a .pt written by echoclr"
        )
    if isinstance(ck.get("rng"), dict):
        ck["rng"] = plain_rng(ck["rng"])
    return ck


# --------------------------------------------------------------------------- RNG states
def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return _numpy_dict(kind, keys, pos, has_gauss, cached)


def _numpy_dict(kind, keys, pos, has_gauss, cached) -> dict[str, Any]:
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 words, exact
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _python_state() -> dict[str, Any]:
    version, words, gauss_next = random.getstate()
    return _python_dict(version, words, gauss_next)


def _python_dict(version, words, gauss_next) -> dict[str, Any]:
    return {
        "version": int(version),
        "state": torch.tensor(list(words), dtype=torch.int64),  # 624 words < 2**32 + index
        "gauss_next": None if gauss_next is None else float(gauss_next),
    }


def plain_rng(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states of a previous-format checkpoint (numpy / python tuples) as plain dicts."""
    out = dict(rng)
    if isinstance(out.get("numpy"), tuple | list):
        out["numpy"] = _numpy_dict(*out["numpy"])
    if isinstance(out.get("python"), tuple | list):
        out["python"] = _python_dict(*out["python"])
    return out


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors / numbers only."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": _numpy_state(),
        "python": _python_state(),
        "generator": generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Put back the states of :func:`capture_rng` (tensors may sit on any device)."""
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
    n = rng["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].cpu().numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = rng["python"]
    random.setstate((p["version"], tuple(int(w) for w in p["state"].tolist()), p["gauss_next"]))
    generator.set_state(rng["generator"].cpu())


# --------------------------------------------------------------------------- resume state
@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches done in the current (incomplete) epoch
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    nonfinite: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # partial-epoch sums
    history: list[dict[str, Any]] = field(default_factory=list)


def state_from_checkpoint(ck: dict) -> TrainState:
    return TrainState(
        epoch=ck["epoch"],
        step=ck["step"],
        batch_in_epoch=ck["batch_in_epoch"],
        best_metric=ck["best_metric"],
        best_epoch=ck["best_epoch"],
        bad_epochs=ck["bad_epochs"],
        nonfinite=ck.get("nonfinite", 0),
        sums=dict(ck.get("sums", {})),
        history=list(ck["history"]),
    )


def build_checkpoint(
    *,
    section: str,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    state: TrainState,
    rng: dict[str, Any],
    config: dict[str, Any],
    data_fingerprint: str | None,
    world_size: int,
) -> dict[str, Any]:
    """The checkpoint dict (``model`` is the plain module, not a DDP / compiled wrapper)."""
    s = state
    return {
        "format": FORMAT,
        "version": __version__,
        "section": section,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "epoch": s.epoch,
        "step": s.step,
        "batch_in_epoch": s.batch_in_epoch,
        "best_metric": s.best_metric,
        "best_epoch": s.best_epoch,
        "bad_epochs": s.bad_epochs,
        "nonfinite": s.nonfinite,
        "sums": dict(s.sums),
        "history": list(s.history),
        "rng": rng,
        "config": redact_config(config),  # the salt and input paths stay in DATA/private/
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
    }


def tensors_finite(module: nn.Module) -> bool:
    return all(
        torch.isfinite(t).all().item()
        for t in module.state_dict().values()
        if t.is_floating_point()
    )


def save_checkpoint(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` to ``path`` atomically (a crash mid-write keeps the previous file)."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))
    return Path(path)


# --------------------------------------------------------------------------- run dir rules
def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run unless asked. Never deletes the directory itself."""
    run_dir = Path(run_dir)
    last = rundir.last_checkpoint(run_dir)
    if resume:
        if not last.exists():
            raise UserError(
                f"--resume: no checkpoint at {last}",
                fix="start a new run without --resume, or point --out at the run to resume",
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"run dir {run_dir} already exists and is not empty",
                fix="use --resume to continue it, --overwrite to replace its outputs, or another --out",
            )
        # --overwrite: remove only the outputs we write, never user files or the directory.
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        ck = run_dir / "checkpoints"
        if ck.is_dir():
            for p in ck.glob("*.pt"):
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def resume_config_changes(old: dict[str, Any], new: dict[str, Any], section: str) -> list[str]:
    """Config keys that changed between a run (``old``) and its resume (``new``) and matter:
    keys of the sections that shape the run, minus :data:`RESUME_MUTABLE_KEYS` and
    ``<section>.epochs``."""
    relevant = ("runtime.", "model.", f"{section}.", "evaluate.")
    return [
        k
        for k in diff_configs(old, new)
        if not k.startswith(RESUME_MUTABLE_KEYS)
        and k != f"{section}.epochs"
        and k.startswith(relevant)
    ]
