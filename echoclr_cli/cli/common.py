"""What every `echoclr` command shares: ``option`` / ``argument`` (an option declared as a field
of the command's options dataclass; ``key=`` names the config key it sets, once) and
``Options.flags()`` (the keys a command's options set, derived from those fields), the options
several commands declare alike (``data_option``, ``workers_option``, ...), the one list parser
(``parse_list``), the options tail every command takes (``@common_options`` -> ``Common``), the
training block (``training_options(func, section)`` -> ``Training``), the bundling of a command's own options
(``@command_options``; the options themselves sit beside each command), config resolution
(``build_config`` / ``Common.resolve``, which also prints the command's first line) and error
handling (``handle_errors``, around every ``@common_options`` command). Only cli/ imports typer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import os
import traceback
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from echoclr_cli import console as report
from echoclr_cli.cli.app import app
from echoclr_cli.cli.follow import follow_data
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
from echoclr_cli.rundir import RunStart

SECTION = "<section>"  # in a key: the section of the command (the training block's keys)
FIELD = "<field>"  # in a key: the option's field name
FIELD_KEY = f"{SECTION}.{FIELD}"  # the key of a :func:`setting`


def option(
    *decls: str,
    help: str,
    key: str | None = None,
    items: Callable[[str], Any] | None = None,
    default: Any = None,
) -> Any:
    """A command's option, declared as a field of its options dataclass: ``typer.Option(*decls,
    help=help)`` with ``default`` (``...``: required). ``key``: the config key the option sets,
    written only here (``{key}`` in ``help`` shows it; :meth:`Options.flags` derives it);
    ``items``: the option is a comma-separated list of this type (:func:`parse_list`)."""
    info = typer.Option(*decls, help=help.replace("{key}", key) if key else help)
    return _field(info, default, key=key, items=items, name=decls[0])


def setting(help: str, *, items: Callable[[str], Any] | None = None, default: Any = None) -> Any:
    """An option that sets the config key named like its field, both derived from the field
    name: field ``frac_seed`` of an :class:`Options` class with ``section = "finetune"`` is the
    flag ``--frac-seed`` and sets ``finetune.frac_seed`` (``{key}`` in ``help`` shows it). In
    the training block the section is the command's. ``items``: as for :func:`option`."""
    return _field(typer.Option(help=help), default, key=FIELD_KEY, items=items, name=None)


def argument(*, help: str, default: Any = ...) -> Any:
    """A command's argument, declared as a field of its options dataclass (``...``: required)."""
    return _field(typer.Argument(help=help), default)


def _field(info: Any, default: Any, **meta: Any) -> Any:
    metadata = {"typer": info, **meta}
    if default is ...:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Options several commands declare alike (``key``: the config key it sets for that command).
def data_option() -> Any:
    return option("--data", key="paths.data", help="Dataset dir ({key}).")


def workers_option() -> Any:
    return option("--workers", key="runtime.workers", help="Data loader workers ({key}).")


def overwrite_option(key: str | None = None) -> Any:
    help = "Replace the outputs of an existing run dir (files we wrote only)."
    return option("--overwrite", key=key, help=help, default=False)


def verbose_option() -> Any:
    help = "Print the resolved config and full tracebacks."
    return option("--verbose", "-v", help=help, default=False)


OPERATING_POINT_HELP = {
    "at_sensitivity": "Extra operating point: the val threshold reaching this sensitivity, "
    "e.g. 0.85.",
    "at_threshold": "Extra operating point at this fixed probability.",
    "calibrate": "Recalibration fitted on val: none | temperature | platt | both.",
}


def operating_point_option(field: str, *, keyed: bool = False) -> Any:
    """``--at-sensitivity``, ``--at-threshold`` or ``--calibrate`` (``field``), declared alike
    by `evaluate` (``keyed``: a :func:`setting` of its section) and `report` (no key)."""
    help = OPERATING_POINT_HELP[field]
    return setting(help) if keyed else option("--" + field.replace("_", "-"), help=help)


def parse_list(text: str, cast: Callable[[str], Any], option: str) -> list[Any]:
    """``"0.01,0.1,1.0"`` -> ``[0.01, 0.1, 1.0]`` for the CLI's list options (UserError naming
    ``option`` on a bad item or an empty list)."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    try:
        out = [cast(x) for x in items]
    except ValueError:
        raise UserError(
            f"{option} '{text}' is not a comma-separated list of {cast.__name__}",
            fix=f"write e.g. {option} 0.01,0.1,1.0"
            if cast is float
            else f"write e.g. {option} a,b",
        ) from None
    if not out:
        raise UserError(f"{option} is empty", fix=f"give at least one value to {option}")
    return out


def keyed_fields(cls: type, section: str = "") -> dict[str, dict[str, Any]]:
    """Field name -> its :func:`option` metadata with the key it sets and its flag resolved (a
    :func:`setting`'s from the field name, ``<section>`` = ``section``), for the fields of
    ``cls`` that set a key."""
    out = {}
    section = section or getattr(cls, "section", "") or SECTION
    for f in dataclasses.fields(cls):
        if key := f.metadata.get("key"):
            key = key.replace(FIELD, f.name).replace(SECTION, section)
            name = f.metadata["name"] or "--" + f.name.replace("_", "-")
            out[f.name] = {**f.metadata, "key": key, "name": name, "declared": f.metadata["key"]}
    return out


def config_value(value: Any, meta: dict[str, Any]) -> Any:
    """An option's value as the config's: None = not given (also a flag left off or a repeatable
    option never used); a path as a string; a comma-separated list as its items."""
    if value is None or value is False or (isinstance(value, list | tuple) and not value):
        return None
    if meta["items"] is not None:
        return parse_list(value, meta["items"], meta["name"])
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, list | tuple) else value


def config_flags(options: Any, section: str = "") -> dict[str, Any]:
    """The config keys the fields of dataclass instance ``options`` set (None = not given);
    ``section`` fills a ``<section>.`` key."""
    return {
        meta["key"]: config_value(getattr(options, name), meta)
        for name, meta in keyed_fields(type(options), section).items()
    }


class Options:
    """Base of a command's own options (a frozen dataclass beside the command, its fields the
    options in ``--help`` order; ``section``: the config section its :func:`setting` fields
    set): ``flags()`` = the config keys they set (None = not given)."""

    section: typing.ClassVar[str] = ""

    def flags(self) -> dict[str, Any]:
        return config_flags(self, self.section)


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


def build_config(
    *,
    section: str,
    config: list[Path] | None,
    sets: list[str] | None,
    profile: str,
    verbose: bool,
    quiet: bool,
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

    config: list[Path] | None = option(
        "--config", "-c", help="YAML config file(s), applied in order over the profile."
    )
    set_: list[str] | None = option(
        "--set", help="Override any config key, e.g. --set pretrain.temperature=0.1 (repeatable)."
    )
    profile: str = option(
        "--profile",
        help="Base settings: paper (published), demo (small CPU profile), or auto = paper "
        "when CUDA is used, demo otherwise.",
        default="auto",
    )
    device: str | None = option(
        "--device", key="runtime.device", help="auto | cpu | cuda | cuda:N ({key})."
    )
    verbose: bool = verbose_option()
    quiet: bool = option("--quiet", "-q", help="Only errors and final results.", default=False)

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
        return build_config(
            section=section,
            config=self.config,
            sets=self.set_,
            profile=self.profile,
            verbose=self.verbose,
            quiet=self.quiet,
            flags=config_flags(self) | (flags or {}),
            data=data,
            run=run,
        )


def bundle_params(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """(name, ``Annotated[type, typer.Option/Argument]``, default) of the fields of dataclass
    ``cls`` (:func:`option` / :func:`argument`), in --help order (a field without a default is a
    required option or argument)."""
    hints = typing.get_type_hints(cls)
    for meta in keyed_fields(cls).values():
        info = meta["typer"]  # a setting's flag and key, now that they are known
        if meta["declared"] == FIELD_KEY:
            info.param_decls = (meta["name"],)  # named, not left to typer (a bool: no --no-x)
        info.help = info.help.replace("{key}", meta["key"])
    return tuple(
        (
            f.name,
            Annotated[hints[f.name], f.metadata["typer"]],
            inspect.Parameter.empty if f.default is MISSING else f.default,
        )
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
    command wrapped by ``training_options`` as its ``training`` argument."""

    resume: bool = option(
        "--resume", help="Continue the run from checkpoints/last.pt.", default=False
    )
    overwrite: bool = overwrite_option()
    force: bool = option(
        "--force", help="Resume even if the config or dataset changed.", default=False
    )
    epochs: int | None = option("--epochs", key="<section>.epochs", help="Training epochs ({key}).")
    batch_size: int | None = option(
        "--batch-size",
        key="<section>.batch_size",
        help="Batch size ({key}): {per}.",
    )
    lr: float | None = option(
        "--lr", key="<section>.optim.learning_rate", help="Learning rate ({key})."
    )
    seed: int | None = option("--seed", key="runtime.seed", help="Global seed ({key}).")
    workers: int | None = workers_option()

    def flags(self, section: str) -> dict[str, Any]:
        """The config keys these options set (None = not given); ``<section>.`` = ``section``."""
        return config_flags(self, section)

    def run_kwargs(self) -> RunStart:
        """What ``run_pretrain`` / ``run_finetune`` take of these options."""
        return RunStart(resume=self.resume, overwrite=self.overwrite, force=self.force)


# what a training option means where it differs between the two commands (``{per}`` in its help)
SECTION_HELP = {
    "batch_size": {
        "pretrain": "pairs over ALL processes together (the global NT-Xent batch)",
        "finetune": "videos per process",
    }
}


def training_options(func: Callable, section: str) -> Callable:
    """Declare the training block once: the command takes a ``training: Training`` parameter,
    which Typer sees as the eight options at that place; their help names ``section``'s keys
    (``<section>`` filled in) and what an option means there (``SECTION_HELP``)."""
    params = []
    for name, hint, default in bundle_params(Training):
        base, info = typing.get_args(hint)
        info = copy.copy(info)  # the class's option info is shared by both commands
        per = SECTION_HELP.get(name, {}).get(section, "")
        info.help = info.help.replace(SECTION, section).replace("{per}", per)
        params.append((name, Annotated[base, info], default))
    return _bundle(func, "training", Training, tuple(params))


def command(options: type, *, device: bool = True) -> Callable[[Callable], Callable]:
    """Register a command (named like the function, its docstring the help) with its own
    ``options`` (``opts``) and the common tail (``common``; without --device when ``device``
    is False): ``@app.command()`` + ``@common_options()`` + ``@command_options(options)``."""
    return lambda func: app.command()(common_options(device=device)(command_options(options)(func)))


def command_options(cls: type) -> Callable[[Callable], Callable]:
    """Declare a command's own options once, as the fields of dataclass ``cls`` (beside the
    command): the command takes an ``opts: cls`` parameter, which Typer sees as those options
    there."""
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
