"""What every `echoclr` command shares: option types (one definition each), small parsers,
the options tail every command takes (``@common_options`` -> ``Common``), the training block
(``@training_options`` -> ``Training``), the bundling of a command's own options
(``@command_options``; the options themselves: cli_params.py), config resolution
(``build_config`` / ``Common.resolve``, which also prints the command's first line) and error
handling (``handle_errors``, around every ``@common_options`` command). Only the cli_* modules
import typer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import traceback
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from echoclr_cli import console as report
from echoclr_cli.config.load import (
    config_to_dict,
    deep_merge,
    load_config,
    parse_set,
    read_yaml,
    resolve_profile,
)
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import Interrupted, Preempted, UserError

ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="YAML config file(s), applied in order over the profile."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override any config key, e.g. --set pretrain.temperature=0.1 (repeatable)."
    ),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        help="Base settings: paper (published), demo (small CPU profile), or auto = paper when "
        "CUDA is used, demo otherwise.",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N (runtime.device).")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print the resolved config and full tracebacks.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and final results.")]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Training epochs (<section>.epochs).")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Batch size per process (<section>.batch_size).")
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Learning rate (<section>.optim.learning_rate).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Global seed (runtime.seed).")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Data loader workers (runtime.workers).")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run from checkpoints/last.pt.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace the outputs of an existing run dir (files we wrote only)."
    ),
]
AtSensOpt = Annotated[
    float | None,
    typer.Option(
        "--at-sensitivity",
        help="Extra operating point: the val threshold reaching this sensitivity, e.g. 0.85.",
    ),
]
AtThrOpt = Annotated[
    float | None,
    typer.Option("--at-threshold", help="Extra operating point at this fixed probability."),
]
CalibrateOpt = Annotated[
    str | None,
    typer.Option(
        "--calibrate", help="Recalibration fitted on val: none | temperature | platt | both."
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Resume even if the config or dataset changed.")
]


DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")]


# sweep grid options (comma-separated lists are parsed by csv_list)
RatiosOpt = Annotated[
    str | None,
    typer.Option("--ratios", help="Label fractions, e.g. 0.01,0.1,1.0 (sweep.ratios)."),
]
InitsOpt = Annotated[
    str | None,
    typer.Option(
        "--inits", help="random,kinetics,simclr,mi-simclr,echoclr or auto = what is available."
    ),
]
TasksOpt = Annotated[
    str | None, typer.Option("--tasks", help="Label columns, e.g. as,lvh (sweep.tasks).")
]
LrsOpt = Annotated[
    str | None, typer.Option("--lrs", help="Learning rates above the low ratio (sweep.lrs).")
]
LowRatioLrsOpt = Annotated[
    str | None,
    typer.Option(
        "--low-ratio-lrs", help="LR grid at ratio <= sweep.low_ratio (paper: 1e-5,1e-4,5e-4)."
    ),
]
SeedsOpt = Annotated[str | None, typer.Option("--seeds", help="Seeds, e.g. 0,1,2 (sweep.seeds).")]
LowRatioSeedsOpt = Annotated[
    str | None,
    typer.Option(
        "--low-ratio-seeds",
        help="Seeds at ratio <= sweep.low_ratio (sweep.low_ratio_seeds; default: --seeds).",
    ),
]
PretrainDirOpt = Annotated[
    Path | None,
    typer.Option("--pretrain-dir", help="Where SSL runs live (default <paths.runs>/pretrain)."),
]
PretrainMissingOpt = Annotated[
    bool,
    typer.Option("--pretrain-missing", help="Run missing SSL pretraining instead of stopping."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Run only shard i/n of the grid (SLURM arrays, several GPUs)."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the plan (done/pending, cost) and stop.")
]
LauncherOpt = Annotated[
    str | None,
    typer.Option(
        "--launcher",
        help="inline (default): train here; local: submitit jobs on this machine; slurm: a job "
        "array (needs the \\[cluster] extra; sweep.launcher).",
    ),
]
JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        help="local/slurm: jobs (array tasks) for the runs; 0 = one per run (slurm), one per "
        "GPU (local).",
    ),
]
SlurmPartitionOpt = Annotated[
    str | None, typer.Option("--slurm-partition", help="SLURM partition (sweep.slurm.partition).")
]
SlurmTimeOpt = Annotated[
    int | None,
    typer.Option("--slurm-time", help="Minutes per array task (sweep.slurm.time_min)."),
]
SlurmGpusOpt = Annotated[
    int | None, typer.Option("--slurm-gpus", help="GPUs per array task (sweep.slurm.gpus).")
]
SlurmArrayParallelismOpt = Annotated[
    int | None,
    typer.Option(
        "--slurm-array-parallelism",
        help="Array tasks running at once (sweep.slurm.array_parallelism).",
    ),
]


class CheckFor(StrEnum):
    """What ``echoclr check --for`` also checks batches against."""

    pretrain = "pretrain"
    finetune = "finetune"


def csv_list(text: str | None, cast: Callable[[str], Any], option: str) -> list[Any] | None:
    """``--ratios 0.01,0.1`` -> ``[0.01, 0.1]`` (None when the option is not given)."""
    if text is None:
        return None
    from echoclr_cli.sweep.grid import parse_list

    return parse_list(text, cast, option)


def path_str(path: Path | None) -> str | None:
    """A path option as the config's string value (None when not given)."""
    return str(path) if path else None


def _put(d: dict, dotted: str, value: Any) -> None:
    node = d
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in tree.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, dict):
            keys.extend(_dotted(v, f"{prefix}{k}."))
    return keys


def user_set_keys(config: list[Path] | None, overrides: dict) -> frozenset[str]:
    """The dotted config keys the user chose: in a ``--config`` file, or by a flag or ``--set``
    (``overrides``, nested). A profile's values are not the user's choice, so settings that
    follow the data (frame size, a user archive's split, the model of an init) may replace them.
    """
    layers = [read_yaml(f) for f in config or []] + [overrides]
    return frozenset(k for layer in layers for k in _dotted(layer))


def _with_frame_size(cfg: Config, size: int) -> Config:
    return cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"size": size})})


def frames_from_data(
    cfg: Config, explicit: frozenset[str], data: Path | None, run: Path | None
) -> tuple[Config, str | None]:
    """``cfg`` at the frame size of what the command reads, and where it came from: the dataset
    ``data`` (dataset.json), else the fine-tuned run ``run`` (the size it was trained at). A
    ``preprocess.size`` the user set (``explicit``) that differs is refused, naming both; the
    profile's never is. Nothing to read yet (no dataset.json, not a run dir): ``cfg`` as is."""
    from echoclr_cli.data.manifest import check_frame_size, dataset_frame_size

    user_size = "preprocess.size" in explicit
    if data is not None and (size := dataset_frame_size(data)) is not None:
        if user_size:
            check_frame_size(data, cfg)
        return _with_frame_size(cfg, size), "dataset"
    if run is None:
        return cfg, None
    from echoclr_cli import rundir

    try:
        size = rundir.run_frame_size(run)
    except UserError:  # unreadable run files: the command names them when it reads the run
        return cfg, None
    if size is None:
        return cfg, None
    if user_size and size != cfg.preprocess.size:
        raise UserError(
            f"run {run} was trained on {size} px frames but preprocess.size is set to "
            f"{cfg.preprocess.size} px",
            fix="drop the preprocess.size setting (commands take the frame size from the run)",
        )
    return _with_frame_size(cfg, size), "run"


def follow_data(
    cfg: Config,
    section: str,
    explicit: frozenset[str],
    data: Path | None = None,
    run: Path | None = None,
) -> tuple[Config, str | None, list[str]]:
    """The settings that follow what a command reads rather than the profile, except the keys
    the user set (``explicit``): the frame size of the dataset or run it reads; for
    ``preprocess`` of a user archive, the published size and split; for ``finetune`` the model
    of its init (an SSL run's arch and width, Kinetics-400's width 1.0), for ``sweep`` the
    width a named Kinetics init needs. Returns the config, where the frame size came from (for
    the first line) and one line per change."""
    notes: list[str] = []
    frames: str | None = None
    if section == "preprocess":
        from echoclr_cli.preprocess.run import user_archive_settings

        cfg, notes = user_archive_settings(cfg, explicit)
        if cfg.preprocess.input is not None and "preprocess.size" not in explicit:
            frames = "paper, user archive"
    else:
        cfg, frames = frames_from_data(cfg, explicit, data, run)
    init = {"finetune": cfg.finetune.init, "sweep": "kinetics"}.get(section)
    if init is not None and (section != "sweep" or "kinetics" in cfg.sweep.inits):
        from echoclr_cli.finetune.run import follow_init_model

        cfg, line = follow_init_model(cfg, explicit, init=init)
        notes += [line] if line else []
    return cfg, frames, notes


def build_config(
    *,
    section: str,
    config: list[Path] | None,
    sets: list[str] | None,
    profile: str,
    verbose: bool,
    quiet: bool,
    device: str | None = None,
    flags: dict[str, Any] | None = None,
    data: Path | bool | None = None,
    run: Path | None = None,
) -> Config:
    """Resolve the config: defaults < profile < --config YAML < flags < --set; then the settings
    that follow the data (:func:`follow_data`: ``data`` = the dataset dir the command reads,
    True = ``paths.data``; ``run`` = the fine-tuned run it reads); then print the command's
    first line (profile and the settings that shape data and model) and what followed the data.
    """
    # Under torchrun only rank 0 talks (the engine also writes outputs from rank 0 only).
    report.set_quiet(quiet or int(os.environ.get("RANK", "0")) > 0)
    overrides: dict = {}
    for key, value in (flags or {}).items():
        if value is not None:
            _put(overrides, key, value)
    if device is not None:
        _put(overrides, "runtime.device", device)
    overrides = deep_merge(overrides, parse_set(sets or []))
    dev = (overrides.get("runtime") or {}).get("device", "auto")
    prefer = section if section != "demo" else "sweep"
    cfg = load_config(config, overrides, resolve_profile(profile, dev), prefer=prefer)
    data_dir = cfg.paths.data if data is True else data or None
    cfg, frames, notes = follow_data(
        cfg, section, user_set_keys(config, overrides), data=data_dir, run=run
    )
    report.show_settings(cfg, section, requested_profile=profile, frames_from=frames)
    for note in notes:
        report.info(note)
    if verbose:
        report.print_config(config_to_dict(cfg))
    return cfg


@dataclass(frozen=True)
class Common:
    """The options tail every command shares (--config, --set, --profile, --device, -v, -q),
    given to a command decorated with ``@common_options`` as its ``common`` argument."""

    config: ConfigOpt = None
    set_: SetOpt = None
    profile: ProfileOpt = "auto"
    device: DeviceOpt = None
    verbose: VerboseOpt = False
    quiet: QuietOpt = False

    def resolve(
        self,
        *,
        section: str,
        flags: dict[str, Any] | None = None,
        data: Path | bool | None = None,
        run: Path | None = None,
    ) -> Config:
        """``build_config`` with these options, the command's own ``flags`` and what it reads
        (``data``: its dataset dir, True = ``paths.data``; ``run``: a fine-tuned run dir)."""
        options = dataclasses.asdict(self)
        return build_config(
            section=section, sets=options.pop("set_"), flags=flags, data=data, run=run, **options
        )


def bundle_params(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """(name, option type, default) of the fields of dataclass ``cls``, in --help order (a field
    without a default is a required option or argument)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(
        (f.name, hints[f.name], inspect.Parameter.empty if f.default is MISSING else f.default)
        for f in dataclasses.fields(cls)
    )


def _bundle(func: Callable, arg: str, cls: type, params: tuple) -> Callable:
    """Replace ``func``'s keyword ``arg`` by the options ``params`` ((name, type, default) each)
    at that place in the signature Typer sees; the wrapped command gets them as one ``cls``."""
    sig = inspect.signature(func, eval_str=True)
    if arg not in sig.parameters:
        raise TypeError(f"{func.__name__}: its bundled options need a `{arg}` parameter")
    tail = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=t, default=d)
        for n, t, d in params
    ]
    out: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        out.extend(tail if p.name == arg else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)])

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        bundled = cls(**{n: kwargs.pop(n) for n, _, _ in params})
        return func(**kwargs, **{arg: bundled})

    command.__signature__ = sig.replace(parameters=out)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in out}
    return command


def common_options(*, device: bool = True) -> Callable[[Callable], Callable]:
    """Declare the common options tail once: the command takes a keyword-only ``common: Common``
    parameter, which Typer sees as the six options (five with ``device=False``) at that place.
    The command runs inside ``handle_errors(common.verbose)`` (-v: full tracebacks)."""
    params = tuple(p for p in bundle_params(Common) if device or p[0] != "device")

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def guarded(**kwargs: Any) -> Any:
            with handle_errors(kwargs["common"].verbose):
                return func(**kwargs)

        return _bundle(guarded, "common", Common, params)

    return decorate


@dataclass(frozen=True)
class Training:
    """The training block `pretrain` and `finetune` share (--resume ... --workers), given to a
    command decorated with ``@training_options`` as its ``training`` argument."""

    resume: ResumeOpt = False
    overwrite: OverwriteOpt = False
    force: ForceOpt = False
    epochs: EpochsOpt = None
    batch_size: BatchOpt = None
    lr: LrOpt = None
    seed: SeedOpt = None
    workers: WorkersOpt = None

    def flags(self, section: str) -> dict[str, Any]:
        """The config keys these options set (None = not given)."""
        return {
            f"{section}.epochs": self.epochs,
            f"{section}.batch_size": self.batch_size,
            f"{section}.optim.learning_rate": self.lr,
            "runtime.seed": self.seed,
            "runtime.workers": self.workers,
        }

    def run_kwargs(self) -> dict[str, bool]:
        """What ``run_pretrain`` / ``run_finetune`` take of these options."""
        return {"resume": self.resume, "overwrite": self.overwrite, "force": self.force}


def training_options(func: Callable) -> Callable:
    """Declare the training block once: the command takes a ``training: Training`` parameter,
    which Typer sees as the eight options at that place."""
    return _bundle(func, "training", Training, bundle_params(Training))


def command_options(cls: type) -> Callable[[Callable], Callable]:
    """Declare a command's own options once, as the fields of dataclass ``cls`` (cli_params.py):
    the command takes an ``opts: cls`` parameter, which Typer sees as those options there."""
    return lambda func: _bundle(func, "opts", cls, bundle_params(cls))


@contextlib.contextmanager
def handle_errors(verbose: bool):
    """User errors -> one line + fix, exit 1; preemption -> exit 143; Ctrl-C -> exit 130 (one
    line: the checkpoint saved and --resume); no traceback unless -v."""
    try:
        yield
    except UserError as e:
        if verbose:
            traceback.print_exc()
        report.error(e.message, e.fix)
        raise typer.Exit(code=e.code) from None
    except Interrupted as e:  # Ctrl-C during training: the engine saved last.pt
        report.warn(str(e))
        raise typer.Exit(code=e.code) from None
    except Preempted as e:
        report.warn(f"preempted ({e}); checkpoint saved, continue with --resume")
        raise typer.Exit(code=143) from None
    except KeyboardInterrupt:
        report.error("interrupted")
        raise typer.Exit(code=130) from None
