"""Initial weights for fine-tuning: random, Kinetics-400, our SSL runs, and foreign checkpoints.

``finetune.init`` is one of:

- ``random``: torchvision's initialisation (nothing is loaded);
- ``random-bn``: the same random weights, with the BatchNorm running statistics re-estimated on
  the pretraining split without a gradient step (a control for the SSL inits; ``bn_init.py``);
- ``kinetics``: torchvision's Kinetics-400 weights for ``model.arch``, read from the local torch
  hub cache (``torch.hub.get_dir()/checkpoints/<file name of the torchvision weight URL>``) or
  from ``finetune.weights``. Never downloaded: the tool runs offline. Needs ``model.width 1.0``
  (the CLI's model follows a Kinetics init there unless the user set a width);
- a run dir of ours (``checkpoints/best.pt`` when it exists, i.e. a fine-tune run, else
  ``checkpoints/last.pt``, i.e. a pretrain run) or one of our checkpoint files
  (``{"format": "echoclr-checkpoint", "model": state}`` with ``backbone.`` keys);
- a checkpoint from elsewhere: the published EchoCLR scripts' ``{"weights": state, "optimizer":
  ...}`` with ``encoder.`` keys next to ``projector.`` / ``reordering_head.`` keys (or their run
  dir: the ``chkpt_epoch-N.pt`` with the highest N, as their fine-tuning picked), a ``{"state_dict": state}``
  wrapper, or a plain torchvision video state dict; each with or without ``module.`` /
  ``backbone.`` / ``encoder.`` prefixes (whole prefixes are removed, never single characters).

Loading is strict about the backbone: every backbone tensor must be in the file with the same
shape, else :class:`UserError` naming the tensors and shapes (unless ``finetune.allow_missing``).
BatchNorm ``num_batches_tracked`` counters are not weights (older torchvision files lack them);
missing ones keep their initial value and are listed apart. Tensors of the file that the backbone
does not use (projector, reordering head, Kinetics ``fc``) are listed as unexpected. Every file is
read with ``checkpoint.safe_load`` (``torch.load(weights_only=True)``: no code runs while loading;
a file that needs arbitrary objects is refused naming it).

Which inits can be used at all (:func:`init_available`) and where each architecture's Kinetics
weights live (:func:`kinetics_weight_path`, :func:`kinetics_url`) are decided here, once.

The result, :class:`InitReport`, is written to the run dir as ``init.json``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from echoclr_cli import rundir
from echoclr_cli.config.schema import KINETICS_MEAN, KINETICS_STD, Config
from echoclr_cli.errors import UserError
from echoclr_cli.models.bn_init import RANDOM_BN, random_bn
from echoclr_cli.models.checkpoint import safe_load

BUILTIN_INITS = ("random", RANDOM_BN, "kinetics")  # inits that name no file

# Whole key prefixes a backbone may sit under, tried after removing leading "module." wrappers.
BACKBONE_PREFIXES = ("backbone.", "encoder.", "")
WRAPPER_PREFIX = "module."  # nn.DataParallel / DistributedDataParallel
OPTIONAL_SUFFIX = "num_batches_tracked"  # BatchNorm counters: not weights
MAX_NAMED = 5  # tensors named in one error message


@dataclass
class InitReport:
    """What was loaded into the backbone (``init.json``)."""

    init: str  # the finetune.init value
    source: str | None  # file read (None for random)
    format: str  # random | random-bn | kinetics | echoclr-checkpoint | echoclr-published | state-dict-wrapper | state-dict
    prefix: str | None  # key prefix removed to reach backbone names ("" = none)
    normalization: dict[str, list[float]] | None  # input mean/std after min-max, or None
    allow_missing: bool = False
    sha256: str | None = None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # backbone tensors not in the file
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # name, file_shape, model_shape
    unexpected: list[str] = field(default_factory=list)  # file tensors the backbone does not use
    missing_counters: list[str] = field(default_factory=list)  # BatchNorm counters absent (fine)
    checkpoint_config: dict[str, Any] | None = None  # model section of our checkpoint, if any
    bn_estimate: dict[str, Any] | None = None  # random-bn: split, videos, batches, clips

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- file locations
# model.arch -> the name of its torchvision weights enum (whose KINETICS400_V1 entry we use).
KINETICS_WIDTH = 1.0  # torchvision's Kinetics-400 weights exist for the full-width models only
KINETICS_WEIGHTS = {
    "r3d_18": "R3D_18_Weights",
    "mc3_18": "MC3_18_Weights",
    "r2plus1d_18": "R2Plus1D_18_Weights",
}


def kinetics_url(arch: str) -> str:
    """torchvision's download URL of the Kinetics-400 weights of ``arch``."""
    import torchvision.models.video as tv_video

    if arch not in KINETICS_WEIGHTS:
        raise UserError(f"no Kinetics-400 weights known for model.arch '{arch}'", fix="use r3d_18")
    return getattr(tv_video, KINETICS_WEIGHTS[arch]).KINETICS400_V1.url


def kinetics_weight_path(arch: str) -> Path:
    """Where torchvision keeps the Kinetics-400 weights of ``arch`` in the local hub cache."""
    name = kinetics_url(arch).rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def kinetics_file(cfg: Config) -> Path:
    """The Kinetics-400 weight file a run reads: ``finetune.weights`` or the hub cache file."""
    if cfg.finetune.weights:
        return Path(cfg.finetune.weights).expanduser()
    return kinetics_weight_path(cfg.model.arch)


class InitCheck(NamedTuple):
    """Whether an init can be loaded: ``ok``, ``reason`` (where it was found, or why not) and
    ``fix`` (what to do when not ok)."""

    ok: bool
    reason: str
    fix: str = ""


def init_available(init: str, cfg: Config) -> InitCheck:
    """Can ``init`` (random | kinetics | run dir | checkpoint file) be loaded for ``cfg.model``?

    Cheap: looks at files, reads none. Kinetics needs its weight file (never downloaded) and
    ``model.width`` 1.0; a run dir needs a checkpoint (:func:`resolve_init_file`).
    """
    if init == "random":
        return InitCheck(True, "torchvision initialisation")
    if init == RANDOM_BN:
        return InitCheck(
            True, "torchvision initialisation, BatchNorm statistics of the pretraining split"
        )
    if init == "kinetics":
        arch = cfg.model.arch
        try:
            path = kinetics_file(cfg)
            if not path.is_file():
                return InitCheck(
                    False,
                    f"Kinetics-400 weights for {arch} not found at {path} (echoclr never "
                    "downloads)",
                    f"copy {path.name} (from {kinetics_url(arch)}) to {path}, or pass --weights "
                    "PATH",
                )
        except UserError as e:  # an architecture without Kinetics weights
            return InitCheck(False, e.message, e.fix or "")
        if cfg.model.width != KINETICS_WIDTH:
            return InitCheck(
                False,
                f"Kinetics-400 weights need model.width {KINETICS_WIDTH} (this run uses "
                f"{cfg.model.width})",
                f"drop the model.width setting (the model then follows the Kinetics init: width "
                f"{KINETICS_WIDTH}), or set model.width={KINETICS_WIDTH}",
            )
        return InitCheck(True, f"found {path}")
    try:
        path = resolve_init_file(init)
    except UserError as e:
        return InitCheck(False, e.message, e.fix or "")
    return InitCheck(True, f"found {path}")


def resolve_init_file(init: str) -> Path:
    """Checkpoint file of ``init`` (a run dir or a file); UserError when there is none."""
    path = Path(init).expanduser()
    if path.is_dir():
        found = rundir.find_checkpoint(path)
        if found is not None:
            return found
        published = _published_checkpoints(path)
        if published:
            return published[-1]
        raise UserError(
            f"finetune.init: run dir {path} has no checkpoints/best.pt or checkpoints/last.pt "
            "(nor published-style chkpt_epoch-N.pt files)",
            fix="point --init at a finished (or resumable) run, or at a checkpoint file",
        )
    if path.is_file():
        return path
    raise UserError(
        f"finetune.init '{init}' is not 'random', '{RANDOM_BN}', 'kinetics', a run dir or a "
        "checkpoint file",
        fix=f"use --init random | {RANDOM_BN} | kinetics | runs/pretrain/<run> | "
        "path/to/checkpoint.pt",
    )


def _published_checkpoints(run_dir: Path) -> list[Path]:
    """``chkpt_epoch-N.pt`` files of a published-script SSL run dir, by increasing N."""
    found = []
    for p in run_dir.glob("chkpt_epoch-*.pt"):
        epoch = p.stem.split("-", 1)[1]
        if epoch.isdigit():
            found.append((int(epoch), p))
    return [p for _, p in sorted(found)]


def input_normalization(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean/std applied after min-max scaling, or None.

    ``finetune.normalize``: ``auto`` = Kinetics statistics for ``init: kinetics`` (the weights
    were trained on normalised RGB), none otherwise (our SSL runs see min-max scaled clips).
    """
    mode = cfg.finetune.normalize
    if mode == "kinetics" or (mode == "auto" and cfg.finetune.init == "kinetics"):
        return KINETICS_MEAN, KINETICS_STD
    return None


# --------------------------------------------------------------------------- reading files
def read_weights_file(path: Path) -> Any:
    """The file's content, read safely on CPU (``checkpoint.safe_load``; UserError naming the
    file when it is unreadable or needs arbitrary objects to unpickle)."""
    return safe_load(Path(path), "cpu", "weights file")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def unpack_state(obj: Any) -> tuple[dict[str, Tensor], str, dict[str, Any] | None]:
    """Find the state dict in a loaded checkpoint: ``(state, format, model config or None)``."""
    if isinstance(obj, Mapping):
        if obj.get("format") == "echoclr-checkpoint" and _is_state_dict(obj.get("model")):
            model_cfg = (obj.get("config") or {}).get("model")
            return dict(obj["model"]), "echoclr-checkpoint", model_cfg
        if _is_state_dict(obj.get("weights")):
            return dict(obj["weights"]), "echoclr-published", None
        for key in ("state_dict", "model", "model_state_dict"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), "state-dict-wrapper", None
        if _is_state_dict(obj):
            return dict(obj), "state-dict", None
    raise UserError(
        "the weights file holds no state dict (expected a mapping of tensor names to tensors, "
        "or one under 'model', 'weights' or 'state_dict')",
        fix="pass an echoclr run/checkpoint, a published EchoCLR checkpoint or a torchvision "
        "state dict",
    )


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove leading ``module.`` prefixes (DataParallel) from every key that has them."""
    out = {}
    for k, v in state.items():
        while k.startswith(WRAPPER_PREFIX):
            k = k[len(WRAPPER_PREFIX) :]
        out[k] = v
    return out


def split_backbone(
    state: Mapping[str, Tensor], own_keys: set[str]
) -> tuple[dict[str, Tensor], str, list[str]]:
    """Backbone tensors of ``state`` keyed like the model: ``(backbone state, prefix, others)``.

    The prefix (``backbone.``, ``encoder.`` or none) is the one whose stripped names cover the
    most backbone tensors; ``others`` are the file's keys outside that prefix or unknown to the
    backbone.
    """
    state = strip_wrappers(state)
    best_prefix, best_hits = None, 0
    for prefix in BACKBONE_PREFIXES:
        hits = sum(1 for k in state if k.startswith(prefix) and k[len(prefix) :] in own_keys)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    stem = "stem.0.weight"  # every video ResNet has it; a 2-D ResNet shares only layerN names
    if best_prefix is None or f"{best_prefix}{stem}" not in state:
        sample = ", ".join(list(state)[:MAX_NAMED])
        raise UserError(
            f"no video ResNet backbone found in the weights file: no '{stem}' (its keys look "
            f"like: {sample}); expected names such as '{stem}', 'layer1.0.conv1.0.weight' "
            "(optionally under backbone./encoder./module.)",
            fix="pass a video ResNet (r3d_18 / r2plus1d_18 / mc3_18) checkpoint",
        )
    sub = {
        k[len(best_prefix) :]: v
        for k, v in state.items()
        if k.startswith(best_prefix) and k[len(best_prefix) :] in own_keys
    }
    others = sorted(
        k for k in state if not (k.startswith(best_prefix) and k[len(best_prefix) :] in own_keys)
    )
    return sub, best_prefix, others


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- loading
def load_backbone_weights(
    backbone: nn.Module,
    state: Mapping[str, Tensor],
    allow_missing: bool = False,
    source: str = "weights file",
) -> dict[str, Any]:
    """Load ``state`` into ``backbone`` strictly; returns the key lists of :class:`InitReport`.

    Raises UserError naming every missing tensor and shape mismatch (first few) unless
    ``allow_missing``, in which case the matching tensors load and the rest keep their init.
    """
    own = backbone.state_dict()
    sub, prefix, others = split_backbone(state, set(own))
    missing_all = [k for k in own if k not in sub]  # model order: stem first
    counters = [k for k in missing_all if k.endswith(OPTIONAL_SUFFIX)]
    missing = [k for k in missing_all if not k.endswith(OPTIONAL_SUFFIX)]
    mismatched = [
        {"name": k, "file_shape": list(sub[k].shape), "model_shape": list(own[k].shape)}
        for k in own
        if k in sub and tuple(sub[k].shape) != tuple(own[k].shape)
    ]
    if (missing or mismatched) and not allow_missing:
        raise UserError(
            _mismatch_message(source, prefix, missing, mismatched, len(own)),
            fix=(
                "build the model the checkpoint was trained with (--set model.arch=... / "
                "model.width=...), or pass --set finetune.allow_missing=true to keep the "
                "initial values of the tensors that do not load"
            ),
        )
    bad = {m["name"] for m in mismatched}
    good = {k: v for k, v in sub.items() if k not in bad}
    with torch.no_grad():
        for k, v in good.items():
            own[k].copy_(v.to(dtype=own[k].dtype))
    return {
        "prefix": prefix,
        "loaded": sorted(good),
        "missing": missing,
        "mismatched": mismatched,
        "unexpected": others,
        "missing_counters": counters,
    }


def _mismatch_message(
    source: str, prefix: str, missing: list[str], mismatched: list[dict], n_own: int
) -> str:
    parts = []
    if mismatched:
        named = "; ".join(
            f"{m['name']}: file {tuple(m['file_shape'])} vs model {tuple(m['model_shape'])}"
            for m in mismatched[:MAX_NAMED]
        )
        more = len(mismatched) - MAX_NAMED
        parts.append(
            f"{len(mismatched)} shape mismatch(es): {named}"
            + (f" (+{more} more)" if more > 0 else "")
        )
    if missing:
        more = len(missing) - MAX_NAMED
        parts.append(
            f"{len(missing)} of {n_own} backbone tensors missing from the file: "
            + ", ".join(missing[:MAX_NAMED])
            + (f" (+{more} more)" if more > 0 else "")
        )
    where = f" (keys under '{prefix}')" if prefix else ""
    return f"{source}{where} does not fit the model's backbone: " + "; ".join(parts)


def init_backbone(cfg: Config, backbone: nn.Module, data_dir: Path | None = None) -> InitReport:
    """Load ``cfg.finetune.init`` into ``backbone`` (in place) and report what was loaded.
    ``data_dir``: the dataset, read by ``random-bn`` only (its pretraining split)."""
    ft = cfg.finetune
    norm = input_normalization(cfg)
    norm_d = {"mean": list(norm[0]), "std": list(norm[1])} if norm else None
    # finetune.weights is read only for init kinetics (a sweep passes it to every init's runs).
    if ft.init == "random":
        return InitReport("random", None, "random", None, norm_d, ft.allow_missing)
    if ft.init == RANDOM_BN:
        bn = random_bn(cfg, backbone, data_dir, norm)
        return InitReport(
            RANDOM_BN, None, RANDOM_BN, None, norm_d, ft.allow_missing, bn_estimate=bn
        )
    avail = init_available(ft.init, cfg)
    if not avail.ok:
        raise UserError(avail.reason, fix=avail.fix)
    if ft.init == "kinetics":
        path, fmt = kinetics_file(cfg), "kinetics"
    else:
        path, fmt = resolve_init_file(ft.init), ""
    obj = read_weights_file(path)
    state, detected, model_cfg = unpack_state(obj)
    if model_cfg:
        _check_model_config(model_cfg, cfg, path)
    keys = load_backbone_weights(backbone, state, ft.allow_missing, source=str(path))
    return InitReport(
        init=ft.init,
        source=str(path),
        format=fmt or detected,
        normalization=norm_d,
        allow_missing=ft.allow_missing,
        sha256=_sha256(path),
        checkpoint_config=model_cfg,
        **keys,
    )


def _check_model_config(model_cfg: Mapping[str, Any], cfg: Config, path: Path) -> None:
    """Our checkpoints record arch and width: refuse a different model before loading tensors."""
    diffs = [
        f"model.{k} {model_cfg[k]!r} (this run: {getattr(cfg.model, k)!r})"
        for k in ("arch", "width")
        if k in model_cfg and model_cfg[k] != getattr(cfg.model, k)
    ]
    if diffs and not cfg.finetune.allow_missing:
        sets = " ".join(
            f"--set model.{k}={model_cfg[k]}" for k in ("arch", "width") if k in model_cfg
        )
        raise UserError(
            f"{path} was trained with " + ", ".join(diffs),
            fix=f"fine-tune with the same model: {sets}",
        )
