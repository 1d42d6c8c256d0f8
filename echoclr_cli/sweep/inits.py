"""Which inits a sweep compares: random, random-bn, Kinetics-400, and SSL pretrain runs found on
disk.

``resolve_inits`` turns ``sweep.inits`` into ``finetune.init`` values, says where each was found
or why it was left out, and lists the pretraining to do first (``--pretrain-missing``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.models.bn_init import RANDOM_BN
from echoclr_cli.rundir import last_checkpoint, run_progress
from echoclr_cli.rundir import pretrain_root as default_pretrain_root
from echoclr_cli.sweep.grid import INIT_ORDER, NAME_RE, SSL_METHODS


@dataclass(frozen=True)
class PretrainSpec:
    """An SSL init that has to be (re)pretrained before the sweep (``--pretrain-missing``)."""

    method: str
    run_dir: Path
    status: str  # missing | partial
    command: str  # the equivalent `echoclr pretrain` command line


def pretrain_root(cfg: Config) -> Path:
    return default_pretrain_root(cfg).expanduser().resolve()


def pretrain_command(method: str, data_dir: Path, run_dir: Path, resume: bool = False) -> str:
    """The `echoclr pretrain` command line that makes (or finishes) the init ``method``."""
    q = shlex.quote
    cmd = f"echoclr pretrain --method {q(method)} --data {q(str(data_dir))} --out {q(str(run_dir))}"
    return cmd + (" --resume" if resume else "")


def _model_mismatch(run_dir: Path, cfg: Config) -> str | None:
    """How a pretrain run's model differs from the sweep's (arch/width), or None."""
    try:
        model = yaml.safe_load((run_dir / "config.yaml").read_text()).get("model") or {}
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    diffs = [
        f"model.{k} {model[k]!r} (sweep: {getattr(cfg.model, k)!r})"
        for k in ("arch", "width")
        if k in model and model[k] != getattr(cfg.model, k)
    ]
    return ", ".join(diffs) or None


def kinetics_unavailable(cfg: Config) -> str | None:
    """Why ``finetune.init kinetics`` cannot load into the sweep's model, or None when it can
    (``weights.init_available``, the one definition)."""
    from echoclr_cli.models.weights import init_available

    check = init_available("kinetics", cfg)
    return None if check.ok else check.reason


def _ssl_state(cfg: Config, run_dir: Path) -> tuple[str, str]:
    """``(state, detail)`` of a pretrain run dir: ready | partial | missing | mismatch."""
    if not last_checkpoint(run_dir).is_file():
        return "missing", f"no {last_checkpoint(run_dir)}"
    mismatch = _model_mismatch(run_dir, cfg)
    if mismatch:
        return "mismatch", f"{run_dir} was pretrained with {mismatch}"
    prog = run_progress(run_dir, "pretrain")
    done, planned = prog.epochs_done, prog.epochs_planned
    if done is not None and planned is not None and done < planned:
        return "partial", f"{run_dir} stopped at epoch {done} of {planned}"
    return "ready", f"found {run_dir}"


def resolve_inits(
    cfg: Config, data_dir: Path
) -> tuple[list[tuple[str, str]], dict[str, str], list[PretrainSpec]]:
    """Init names -> ``finetune.init`` values, notes per init, and pretraining to do first.

    ``auto``: random, kinetics when its weight file is present (and ``model.width`` is 1.0), and
    every finished pretrain run under the pretrain dir (methods first); ``random-bn`` (random
    weights, BatchNorm statistics of the pretraining split: a control) only when named; with
    ``sweep.pretrain_missing`` the three SSL methods are always included and missing ones are
    pretrained. Named inits must exist: a missing SSL run raises UserError with the exact
    `echoclr pretrain` command (unless ``pretrain_missing``), a missing Kinetics file with where
    to put it.
    """
    sw = cfg.sweep
    root = pretrain_root(cfg)
    data_dir = Path(data_dir).expanduser().resolve()
    auto = sw.inits == ["auto"]
    notes: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    to_pretrain: list[PretrainSpec] = []
    problems: list[str] = []
    fixes: list[str] = []

    if auto:
        found = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name))
            if root.is_dir()
            else []
        )
        extra = [n for n in found if n not in INIT_ORDER]
        names = ["random", "kinetics", *SSL_METHODS, *extra]
    else:
        names = list(dict.fromkeys(sw.inits))

    for name in names:
        if name == "random":
            out.append((name, "random"))
            notes[name] = "torchvision initialisation"
        elif name == RANDOM_BN:
            out.append((name, RANDOM_BN))
            notes[name] = (
                "torchvision initialisation, BatchNorm statistics of the pretraining split"
            )
        elif name == "kinetics":
            from echoclr_cli.models.weights import init_available

            check = init_available("kinetics", cfg)
            if not check.ok:
                if auto:
                    notes[name] = f"left out: {check.reason}"
                    continue
                problems.append(check.reason)
                fixes.append(check.fix)
                continue
            out.append((name, "kinetics"))
            notes[name] = check.reason
        else:
            run_dir = root / name
            state, detail = _ssl_state(cfg, run_dir)
            can_make = sw.pretrain_missing and name in SSL_METHODS
            if state == "ready":
                out.append((name, str(run_dir)))
                notes[name] = detail
            elif state in ("missing", "partial") and can_make:
                cmd = pretrain_command(name, data_dir, run_dir, resume=state == "partial")
                to_pretrain.append(PretrainSpec(name, run_dir, state, cmd))
                out.append((name, str(run_dir)))
                notes[name] = f"to pretrain first ({detail})"
            elif auto:
                notes[name] = f"left out: {detail}"
            elif state == "mismatch":
                problems.append(detail)
                fixes.append(
                    f"pretrain {name} again with the sweep's model, or sweep with its model"
                )
            elif name in SSL_METHODS:
                problems.append(f"init '{name}': {detail}")
                fixes.append(pretrain_command(name, data_dir, run_dir, resume=state == "partial"))
            else:
                problems.append(f"init '{name}': {detail}")
                fixes.append(
                    f"put a pretrain run named {name} under {root} (or set sweep.pretrain_dir)"
                )
    if problems:
        ssl = any(f.startswith("echoclr pretrain") for f in fixes)
        tail = (
            " (or re-run the sweep with --pretrain-missing)"
            if ssl and not sw.pretrain_missing
            else ""
        )
        raise UserError(
            "sweep inits not available: " + "; ".join(problems),
            fix="; ".join(f"run `{f}`" if f.startswith("echoclr ") else f for f in fixes) + tail,
        )
    if not out:
        raise UserError(
            "sweep.inits resolved to nothing", fix="name inits explicitly, e.g. --inits random"
        )
    order = {n: i for i, n in enumerate(INIT_ORDER)}
    out.sort(key=lambda x: (order.get(x[0], len(order)), x[0]))
    return out, notes, to_pretrain
