"""The grid's names and numbers: init/task names, run dir names, LR grid, shard parsing."""

from __future__ import annotations

import re

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.models.bn_init import RANDOM_BN
from echoclr_cli.pretrain.methods import METHOD_NAMES

SSL_METHODS = METHOD_NAMES  # the inits `sweep` can pretrain (pretrain/methods.py)
# table rows / plot lines in this order; random-bn (models/bn_init.py) is the BatchNorm control
INIT_ORDER = ("random", RANDOM_BN, "kinetics", *SSL_METHODS)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # init / task names used as dir names


def fmt_number(x: float) -> str:
    """Short, stable, filesystem-safe number: 0.01 -> '0.01', 1e-4 -> '0.0001', 1e-5 -> '1e-05'."""
    return f"{float(x):g}".replace("+", "")


def run_dir_name(task: str, init: str, ratio: float, lr: float, seed: int) -> str:
    return f"runs/{task}/{init}/r{fmt_number(ratio)}_lr{fmt_number(lr)}_s{seed}"


def is_low_ratio(cfg: Config, ratio: float) -> bool:
    """The paper's low-label regime (1/5/10%): ratio <= ``sweep.low_ratio``."""
    return ratio <= cfg.sweep.low_ratio + 1e-12


def lr_grid(cfg: Config, ratio: float) -> list[float]:
    """``low_ratio_lrs`` at low ratios (:func:`is_low_ratio`), else ``lrs``."""
    sw = cfg.sweep
    grid = sw.low_ratio_lrs if is_low_ratio(cfg, ratio) else sw.lrs
    return sorted(set(float(x) for x in grid))


def seed_grid(cfg: Config, ratio: float) -> list[int]:
    """``low_ratio_seeds`` (when set) at low ratios (:func:`is_low_ratio`), else ``seeds``."""
    sw = cfg.sweep
    low = sw.low_ratio_seeds is not None and is_low_ratio(cfg, ratio)
    return sorted(set(sw.low_ratio_seeds if low else sw.seeds))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (for the CLI's ``--shard``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(
            f"--shard '{text}' is not i/n with 0 <= i < n",
            fix="write e.g. --shard 0/4 (SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
        )
    return int(m.group(1)), int(m.group(2))


def check_grid(cfg: Config) -> None:
    sw = cfg.sweep
    for key in ("ratios", "inits", "tasks", "lrs", "low_ratio_lrs", "seeds", "splits"):
        if not getattr(sw, key):
            raise UserError(f"sweep.{key} is empty", fix=f"give at least one value for sweep.{key}")
    if sw.low_ratio_seeds is not None and not sw.low_ratio_seeds:
        raise UserError(
            "sweep.low_ratio_seeds is empty",
            fix="give at least one seed, or leave it unset to use sweep.seeds",
        )
    bad = [r for r in sw.ratios if not 0 < r <= 1]
    if bad:
        raise UserError(
            f"sweep.ratios {bad} outside (0, 1]", fix="use label fractions like 0.01,0.1,1.0"
        )
    bad = [x for x in [*sw.lrs, *sw.low_ratio_lrs] if not x > 0]
    if bad:
        raise UserError(
            f"sweep learning rates {bad} must be > 0", fix="fix sweep.lrs / sweep.low_ratio_lrs"
        )
    for key in ("tasks", "inits"):
        bad = [x for x in getattr(sw, key) if not NAME_RE.match(x)]
        if bad:
            raise UserError(
                f"sweep.{key} {bad}: names must be letters, digits, '.', '_' or '-'",
                fix=f"rename them in sweep.{key}",
            )
    if "auto" in sw.inits and len(sw.inits) > 1:
        raise UserError(
            f"sweep.inits {sw.inits}: 'auto' cannot be combined with named inits",
            fix="use either --inits auto or a list such as random,kinetics,echoclr",
        )
    if "val" in sw.splits:
        raise UserError(
            "sweep.splits must not contain 'val' (the validation split selects models)",
            fix="use test and/or ext_test",
        )
