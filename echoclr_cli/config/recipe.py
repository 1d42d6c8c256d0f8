"""The published EchoCLR recipe, value by value: the one source of truth for ``--print-recipe``
and for tests/test_recipe.py (docs/METHOD_NOTES.md is the prose view of the same table).

Each ``Item`` names a config key, the value of the published scripts (docs/METHOD.md, "The
published recipe, line by line") and, where the paper profile's default deliberately differs,
``why``. ``published`` may be a function of the resolved config (the epochs follow the method).
Keys that another part of issue 12 adds (``owner``) are reported as pending while this build's
config does not have them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from echoclr_cli.config.schema import Config, pretrain_epochs
from echoclr_cli.pretrain.methods import METHODS


@dataclass(frozen=True)
class Item:
    key: str  # dotted config key
    published: Any | Callable[[Config], Any]  # the published scripts' value
    what: str  # the recipe line it stands for
    why: str = ""  # non-empty: the paper profile deliberately differs (and why)
    ours: Any = None  # the paper profile's value where it differs (documentation and tests)
    owner: str = ""  # another helper of issue 12 adds the key

    @property
    def sections(self) -> tuple[str, ...]:
        """The commands that print it: the key's own section (``sweep.*``, ``evaluate.*``:
        finetune; the projection head ``model.proj_*``: pretrain); the rest both."""
        section = self.key.split(".")[0]
        if section == "pretrain" or self.key.startswith("model.proj_"):
            return ("pretrain",)
        if section in ("finetune", "sweep", "evaluate"):
            return ("finetune",)
        return ("pretrain", "finetune")


def _epochs(cfg: Config) -> int:
    return METHODS[cfg.pretrain.method].published_epochs


AUG = "augmentation: zero-pad 8 + random crop, h-flip p 0.5, rotation in [-10, 10] p 0.5"


def _augment(section: str) -> tuple[Item, ...]:
    """The one published augmentation, used by pretraining and fine-tuning alike."""
    published = {"enabled": True, "pad": 8, "flip_p": 0.5, "rotate_p": 0.5, "max_degrees": 10}
    return tuple(Item(f"{section}.augment.{k}", v, AUG) for k, v in published.items())


RECIPE: tuple[Item, ...] = (
    Item("model.arch", "r3d_18", "backbone: torchvision r3d_18"),
    Item("model.width", 1.0, "backbone width (torchvision's model exactly)"),
    Item("model.proj_hidden", 256, "projection head 512-256-128 (no bias)"),
    Item("model.proj_dim", 128, "projection head 512-256-128 (no bias)"),
    Item(
        "pretrain.batch_size",
        392,
        "global batch: 2 GPUs x 196 pairs, NT-Xent over all 392 pairs (783 candidates)",
    ),
    Item("pretrain.epochs", _epochs, "epochs: SimCLR 520, MI-SimCLR / EchoCLR 300"),
    Item("pretrain.optim.optimizer", "adam", "optimizer Adam"),
    Item("pretrain.optim.learning_rate", 0.1, "Adam lr 0.1"),
    Item("pretrain.optim.weight_decay", 0.0, "no weight decay"),
    Item("pretrain.optim.schedule", "none", "no LR schedule"),
    Item("pretrain.temperature", 0.05, "NT-Xent temperature 0.05"),
    Item("pretrain.clip_len", 4, "pretraining clips of 4 frames"),
    Item("pretrain.stride", 1, "consecutive frames (stride 1)"),
    Item("pretrain.reorder_frames", 4, "EchoCLR: 4 frames permuted, 4! = 24 classes"),
    Item("pretrain.nt_xent_weight", 1.0, "loss = NT-Xent + cross-entropy"),
    Item("pretrain.reorder_weight", 1.0, "loss = NT-Xent + cross-entropy"),
    Item("pretrain.exclude_same_study_negatives", False, "every other clip is a negative"),
    Item(
        "pretrain.view_forward",
        "separate",
        "the two views in separate forward calls (BatchNorm per view)",
    ),
    *_augment("pretrain"),
    Item("finetune.batch_size", 88, "fine-tune batch 88 (1 GPU x 88), no drop_last"),
    Item("finetune.optim.optimizer", "adam", "optimizer Adam"),
    Item("finetune.optim.learning_rate", 1e-4, "Adam lr 1e-4"),
    Item("finetune.epochs", 30, "at most 30 epochs"),
    Item("finetune.patience", 5, "early-stopping patience 5"),
    Item(
        "finetune.early_stop",
        "published",
        "stop after patience + 1 epochs without improvement of the per-video BCE",
    ),
    Item("finetune.dropout", 0.25, "dropout 0.25 (placement: see METHOD_NOTES)"),
    Item("finetune.label_smoothing", 0.0, "label smoothing parsed, never applied"),
    Item("finetune.pos_weight", "balanced", "class weights: balanced positive weight"),
    Item("finetune.clip_len", 16, "fine-tune clips of 16 frames"),
    Item("finetune.stride", 1, "consecutive frames (stride 1)"),
    Item("finetune.mode", "full", "full fine-tuning"),
    *_augment("finetune"),
    Item("sweep.lrs", [1e-4], "LR 1e-4 above 10% labels"),
    Item("sweep.low_ratio_lrs", [1e-5, 1e-4, 5e-4], "LR grid at <= 10% labels"),
    Item("sweep.low_ratio", 0.1, "LR grid at <= 10% labels"),
    Item("sweep.ratios", [0.01, 0.05, 0.1, 0.25, 0.5, 1.0], "label fractions"),
    Item("evaluate.clips_per_video", 4, "4 clips per evaluated video"),
    Item("evaluate.bootstrap", 1000, "1,000 bootstrap resamples"),
    Item(
        "evaluate.ci",
        0.90,
        "bootstrap interval (published: 5th-95th percentiles)",
        why="a true 95% interval (2.5-97.5 percentiles); the published 5-95 is a 90% interval",
        ours=0.95,
    ),
    Item("preprocess.size", 112, "frames resized to 112 x 112"),
    Item(
        "runtime.precision",
        "fp32",
        "fp32 training",
        why="bf16 autocast on CUDA for speed (auto); the losses still run in fp32",
        ours="auto",
    ),
    Item("runtime.sync_bn", False, "BatchNorm statistics per GPU (DataParallel)"),
    Item(
        "preprocess.resize",
        "whole_frame",
        "the whole masked frame resized to 112 x 112 (no sector crop)",
        owner="evalprep",
    ),
    Item(
        "preprocess.short_videos",
        "pad",
        "videos shorter than a clip zero-padded",
        owner="evalprep",
    ),
    Item(
        "evaluate.clip_starts",
        "published",
        "clip starts arange(0, T-L, (T-L)//4)[:4]",
        owner="evalprep",
    ),
    Item(
        "evaluate.scaling",
        "video",
        "min-max over all clips of a video together",
        owner="evalprep",
    ),
    Item(
        "evaluate.bootstrap_unit",
        "video",
        "video-level CIs resampled videos as if independent",
        why="a patient's studies and a study's videos are correlated: every CI and paired "
        "test resamples patients (the study where there is no patient id)",
        ours="patient",
        owner="evalprep",
    ),
)


_MISSING = object()


def get(cfg: Config, key: str) -> Any:
    """The value of a dotted key (``pretrain.epochs`` resolved); ``_MISSING`` if absent."""
    if key == "pretrain.epochs":
        return pretrain_epochs(cfg.pretrain)
    node: Any = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            return _MISSING
        node = getattr(node, part)
    return node


def published_value(item: Item, cfg: Config) -> Any:
    return item.published(cfg) if callable(item.published) else item.published


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@dataclass(frozen=True)
class Row:
    key: str
    value: Any
    published: Any
    status: str  # same | deliberate | changed | pending
    note: str


def recipe_rows(cfg: Config, section: str | None = None) -> list[Row]:
    """The resolved recipe against the published one, for the items of ``section`` (all: None).

    status: ``same``; ``deliberate`` (the paper profile's documented difference, with why);
    ``changed`` (differs from the published value by a profile, config file or flag);
    ``pending`` (the key is not in this build's config)."""
    rows = []
    for it in RECIPE:
        if section is not None and section not in it.sections:
            continue
        pub = published_value(it, cfg)
        value = get(cfg, it.key)
        if value is _MISSING:
            rows.append(Row(it.key, None, pub, "pending", f"added by issue 12 ({it.owner})"))
            continue
        if _same(value, pub):
            rows.append(Row(it.key, value, pub, "same", it.what))
        elif it.why and _same(value, it.ours):
            rows.append(Row(it.key, value, pub, "deliberate", it.why))
        else:
            src = f"profile {cfg.profile}" if cfg.profile != "paper" else "config / flags"
            rows.append(Row(it.key, value, pub, "changed", f"set by {src}; paper: {it.what}"))
    return rows


def format_recipe(rows: list[Row]) -> str:
    """Plain-text table: key, value, published, and a DIFFERS line for every difference."""
    w = max(len(r.key) for r in rows) if rows else 10

    def show(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [f"{'key':<{w}}  {'value':<22} {'published':<22} note"]
    for r in rows:
        mark = {"same": "same", "deliberate": "DIFFERS (deliberate)", "changed": "DIFFERS"}.get(
            r.status, "PENDING"
        )
        lines.append(f"{r.key:<{w}}  {show(r.value):<22} {show(r.published):<22} {mark}: {r.note}")
    n = sum(r.status in ("deliberate", "changed") for r in rows)
    lines.append(f"{n} value(s) differ from the published recipe")
    return "\n".join(lines)
