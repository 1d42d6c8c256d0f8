"""The published EchoCLR recipe, value by value: the one source of truth for ``--print-recipe``
and for tests/test_recipe.py. docs/METHOD_NOTES.md is the prose view of the same table and ends
with its machine-checked copy (``notes_table``).

Three tables, one line per item: ``PUBLISHED`` (where the paper profile matches the published
scripts), ``DIFFERENCES`` (where it deliberately differs: the published value, ours and why;
an item with no config key is a behaviour of the code, ``fixed``) and ``UNSTATED`` (a rule the
published scripts leave open: ours is stated). ``published`` may be a function of the resolved
config (the epochs follow the method). ``recipe_rows`` compares a resolved config with them;
``format_recipe`` prints the rows and counts the differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from echoclr_cli.config.schema import Config, pretrain_epochs
from echoclr_cli.pretrain.methods import METHODS

_MISSING = object()


@dataclass(frozen=True)
class Item:
    key: str  # dotted config key; a behaviour with no key (``fixed``) gets a descriptive one
    published: Any | Callable[[Config], Any]  # the published scripts' value
    what: str  # the recipe line it stands for
    why: str = ""  # non-empty: the paper profile deliberately differs (and why)
    ours: Any = None  # the paper profile's value where it differs (documentation and tests)
    owner: str = ""  # another helper of issue 12 adds the key
    fixed: bool = False  # no config key: the code always does ``ours``
    unstated: bool = False  # the published scripts and paper do not state the rule

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


# Where the paper profile deliberately differs, one line each: ``key | published | ours | why``.
# Config keys' values are YAML; a key that is no config key is a behaviour of the code (``fixed``:
# the code always does ``ours``; the values are words). Read from the published scripts
# (CarDS-Yale/EchoCLR: ssl/dataset.py, finetune/dataset.py, finetune/main.py).
DIFFERENCES = """
evaluate.ci | 0.90 | 0.95 | a true 95% interval (2.5-97.5 percentiles); the published 5th-95th percentiles are a 90% interval
runtime.precision | fp32 | auto | bf16 autocast on CUDA for speed (auto); the losses still run in fp32
evaluate.bootstrap_unit | item | patient | a patient's studies and a study's videos are correlated: every CI and paired test resamples patients (the study where there is no patient id); published: videos resampled as if independent
augment.crop_offset | [0, 2*pad - 1] = [0, 15] | [0, 2*pad] = [0, 16] | symmetric around the centre (the published randint(0, 2*pad) shifts 8 px one way, 7 the other)
augment.rotation | cubic spline (scipy rotate, order 3) | bilinear | one batched grid_sample on the GPU (cv2.warpAffine on CPU); bilinear is what grid_sample does
pretrain.clip_start | random in [0, T-5] | random in [0, T-4] | every start whose 4-frame clip fits (the published np.random.choice(T - 4) never reached the last frame)
finetune.clip_start | random in [0, T-17] | random in [0, T-16] | every start whose 16-frame clip fits (the published np.random.choice(T - 16) never reached the last frame)
finetune.dropout_placement | after the logit layer (zeroes logits) | before the linear head | the intended regulariser; dropping the single logit only adds noise to the output
finetune.fraction_sampling | np.random.choice over study ids (a prefix of one permutation: nested, not stratified) | stratified by label, nested across fractions | a 1% draw always holds both classes
finetune.val_loss_weighting | every element x the positive weight (BCELoss(weight=...)) | positive terms only, as in training | comparable training and validation losses (the published weighting does not change which epoch is best)
finetune.task_column | LVH runs trained on the AS column | the --task column | correctness (a defect of the published scripts)
finetune.ssl_loading | strict=False, unchecked | strict; init.json lists loaded / missing / unexpected tensors | a silent partial load gives random-init results under an SSL name
finetune.kinetics_channels | BGR frames normalised with RGB statistics | RGB frames, RGB statistics | the statistics match the channels
pretrain.methods_reach_dataset | only plain SimCLR could run (switches not passed) | all three methods reach the dataset | correctness (a defect of the published scripts)
preprocess.split_unit | random by study | random by patient | stricter: no patient in two splits
evaluate.aupr | trapezoid under the PR curve | ap (step-wise) and aupr_trapz (the published number), named distinctly | the trapezoid is optimistic between PR points
"""

# Rules the published scripts and paper leave unstated, one line each: ``key | published | why``.
UNSTATED = """
sweep.select_metric | best on validation (metric not stated) | the sweep keeps, per init and label fraction, the lr with the best study-level validation AUROC (ties: lower validation loss); test is never used
"""


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in table.strip().splitlines()]


def _differences() -> tuple[Item, ...]:
    items = []
    for key, published, ours, why in _rows(DIFFERENCES):
        fixed = get(Config(), key) is _MISSING
        pub, our = (published, ours) if fixed else (yaml.safe_load(published), yaml.safe_load(ours))
        items.append(Item(key, pub, f"published: {published}", why, our, fixed=fixed))
    for key, published, why in _rows(UNSTATED):
        items.append(Item(key, published, why, unstated=True))
    return tuple(items)


# The published recipe where the paper profile matches it, one line each: ``key | published |
# what``. Values are YAML (``by method``: the epochs follow the method); ``section.augment.*``
# stands for the five items of the one published augmentation.
PUBLISHED = """
model.arch | r3d_18 | backbone: torchvision r3d_18
model.width | 1.0 | backbone width (torchvision's model exactly)
model.proj_hidden | 256 | projection head 512-256-128 (no bias)
model.proj_dim | 128 | projection head 512-256-128 (no bias)
pretrain.batch_size | 392 | global batch: 2 GPUs x 196 pairs, NT-Xent over all 392
pretrain.bn_group_size | 196 | BatchNorm per 196-clip group of a view (2 replicas)
pretrain.epochs | by method | epochs: SimCLR 520, MI-SimCLR / EchoCLR 300
pretrain.optim.optimizer | adam | optimizer Adam
pretrain.optim.learning_rate | 0.1 | Adam lr 0.1
pretrain.optim.weight_decay | 0.0 | no weight decay
pretrain.optim.schedule | none | no LR schedule
pretrain.temperature | 0.05 | NT-Xent temperature 0.05
pretrain.clip_len | 4 | pretraining clips of 4 frames
pretrain.stride | 1 | consecutive frames (stride 1)
pretrain.reorder_frames | 4 | EchoCLR: 4 frames permuted, 4! = 24 classes
pretrain.reorder_head | linear | EchoCLR order head: one linear layer on the pooled features
pretrain.nt_xent_weight | 1.0 | loss = NT-Xent + cross-entropy
pretrain.reorder_weight | 1.0 | loss = NT-Xent + cross-entropy
pretrain.exclude_same_study_negatives | false | every other clip is a negative
pretrain.view_forward | separate | views in separate forward calls (BN per view)
pretrain.augment.* | the published augmentation |
finetune.batch_size | 88 | fine-tune batch 88 (1 GPU x 88), no drop_last
finetune.optim.optimizer | adam | optimizer Adam
finetune.optim.learning_rate | 1.0e-4 | Adam lr 1e-4
finetune.epochs | 30 | at most 30 epochs
finetune.patience | 5 | early-stopping patience 5
finetune.early_stop | published | stop after patience + 1 epochs without improvement
finetune.dropout | 0.25 | dropout 0.25 (placement: finetune.dropout_placement)
finetune.label_smoothing | 0.0 | label smoothing parsed, never applied
finetune.pos_weight | published | positive-class weight max(1, n_neg / n_pos)
finetune.clip_len | 16 | fine-tune clips of 16 frames
finetune.stride | 1 | consecutive frames (stride 1)
finetune.mode | full | full fine-tuning
finetune.augment.* | the published augmentation |
sweep.lrs | [1.0e-4] | LR 1e-4 above 10% labels
sweep.low_ratio_lrs | [1.0e-5, 1.0e-4, 5.0e-4] | LR grid at <= 10% labels
sweep.low_ratio | 0.1 | LR grid at <= 10% labels
sweep.ratios | [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0] | the 7 label fractions run
evaluate.clips_per_video | 4 | 4 clips per evaluated video
evaluate.bootstrap | 1000 | 1,000 bootstrap resamples
preprocess.size | 112 | frames resized to 112 x 112
runtime.sync_bn | false | BatchNorm not synchronised over processes (groups above)
preprocess.resize | whole_frame | the whole masked frame resized (no sector crop)
preprocess.short_videos | pad | videos shorter than a clip zero-padded
evaluate.clip_starts | published | clip starts arange(0, T-L, (T-L)//4)[:4]
evaluate.scaling | video | min-max over all clips of a video together
"""


def _published() -> tuple[Item, ...]:
    items: list[Item] = []
    for key, published, what in _rows(PUBLISHED):
        if key.endswith(".augment.*"):
            items += _augment(key.split(".")[0])
        elif published == "by method":
            items.append(Item(key, _epochs, what))
        else:
            items.append(Item(key, yaml.safe_load(published), what))
    return tuple(items)


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


RECIPE: tuple[Item, ...] = _published() + _differences()


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
    status: str  # same | deliberate | changed | unstated | pending
    note: str

    @property
    def verdict(self) -> str:
        """The METHOD_NOTES word: same | differs | unstated | pending."""
        return {"deliberate": "differs", "changed": "differs"}.get(self.status, self.status)


def recipe_rows(cfg: Config, section: str | None = None) -> list[Row]:
    """The resolved recipe against the published one, for the items of ``section`` (all: None).

    status: ``same``; ``deliberate`` (the paper profile's documented difference, with why);
    ``changed`` (differs from the published value by a profile, config file or flag);
    ``unstated`` (a rule the published scripts leave open: ours, and why);
    ``pending`` (the key is not in this build's config)."""
    rows = []
    for it in RECIPE:
        if section is not None and section not in it.sections:
            continue
        pub = published_value(it, cfg)
        value = it.ours if it.fixed else get(cfg, it.key)
        if value is _MISSING:
            rows.append(Row(it.key, None, pub, "pending", f"added by issue 12 ({it.owner})"))
        elif it.unstated:
            rows.append(Row(it.key, value, pub, "unstated", it.what))
        elif _same(value, pub):
            rows.append(Row(it.key, value, pub, "same", it.what))
        elif it.why and _same(value, it.ours):
            rows.append(Row(it.key, value, pub, "deliberate", it.why))
        else:
            src = f"profile {cfg.profile}" if cfg.profile != "paper" else "config / flags"
            rows.append(Row(it.key, value, pub, "changed", f"set by {src}; paper: {it.what}"))
    return rows


MARKS = {
    "same": "same",
    "deliberate": "DIFFERS (deliberate)",
    "changed": "DIFFERS",
    "unstated": "OURS (published: not stated)",
    "pending": "PENDING",
}


def format_recipe(rows: list[Row]) -> str:
    """Plain-text table: key, value, published, and a DIFFERS line for every difference; the
    last line counts the differences (and the rules the published scripts leave unstated)."""
    w = max(len(r.key) for r in rows) if rows else 10

    def show(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [f"{'key':<{w}}  {'value':<22} {'published':<22} note"]
    for r in rows:
        note = f"{MARKS[r.status]}: {r.note}"
        lines.append(f"{r.key:<{w}}  {show(r.value):<22} {show(r.published):<22} {note}")
    n = sum(r.verdict == "differs" for r in rows)
    unstated = sum(r.status == "unstated" for r in rows)
    tail = f"; {unstated} rule(s) the published scripts leave unstated" if unstated else ""
    lines.append(f"{n} value(s) differ from the published recipe{tail}")
    return "\n".join(lines)


def notes_table(rows: list[Row]) -> str:
    """The markdown table docs/METHOD_NOTES.md keeps ("Every item of --print-recipe"):
    ``| key | paper profile | published | verdict |``; tests/test_recipe.py compares them."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "/")

    lines = ["| key | paper profile | published | verdict |", "|---|---|---|---|"]
    lines += [f"| `{r.key}` | {cell(r.value)} | {cell(r.published)} | {r.verdict} |" for r in rows]
    return "\n".join(lines)
