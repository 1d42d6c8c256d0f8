"""`echoclr pretrain` and `echoclr finetune`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from echoclr_cli import console as report
from echoclr_cli import rundir
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import (
    Common,
    Options,
    Training,
    command_options,
    common_options,
    data_option,
    option,
    setting,
    training_options,
)

PrintRecipeOpt = Annotated[
    bool,
    typer.Option(
        "--print-recipe",
        help="Print the resolved recipe against the published one (each difference named, "
        "with why) and exit without training.",
    ),
]


def training_command(
    options: type[Options],
    core: Callable[[], Callable[..., Any]],
    default_dir: Callable[[Any], Path],
    shown: str,
) -> Callable[[Callable[[Any], None]], Callable]:
    """Declare `pretrain` / `finetune` (named like the decorated function, its docstring the
    help): the common options, the training block, the command's own ``options`` and
    ``--print-recipe``. The command resolves the config (the training block's keys in its
    section), prints the recipe and stops, or runs ``core()`` (``run_pretrain`` /
    ``run_finetune``, imported when the command runs) into ``--out`` or ``default_dir(cfg)``
    under a progress display titled by the section and its key ``shown`` (the method, the
    task); the decorated function shows the result."""

    def decorate(show: Callable[[Any], None]) -> Callable:
        section = show.__name__

        def command(
            *,
            opts: Options,
            training: Training,
            common: Common,
            print_recipe: PrintRecipeOpt = False,
        ) -> None:
            flags = training.flags(section) | opts.flags()
            cfg = common.resolve(section=section, flags=flags, data=True)
            if print_recipe:
                from echoclr_cli.config.recipe import format_recipe, recipe_rows

                typer.echo(f"recipe of `echoclr {section}` (profile {cfg.profile}):")
                typer.echo(format_recipe(recipe_rows(cfg, section)))
                return
            out = getattr(opts, "out", None) or default_dir(cfg)
            title = f"{section} {getattr(getattr(cfg, section), shown)}"
            with report.progress(title) as on_event:
                res = core()(cfg, cfg.paths.data, out, **training.run_kwargs(), progress=on_event)
            show(res)

        command.__name__, command.__doc__ = section, show.__doc__
        bundled = command_options(options)(command)
        return app.command()(common_options()(training_options(bundled, section)))

    return decorate


def _pretrain_core() -> Callable[..., Any]:
    from echoclr_cli.pretrain.run import run_pretrain  # imported when the command runs

    return run_pretrain


def _finetune_core() -> Callable[..., Any]:
    from echoclr_cli.finetune.run import run_finetune

    return run_finetune


# --------------------------------------------------------------------------- pretrain
@dataclass(frozen=True)
class PretrainOptions(Options):
    """``echoclr pretrain`` (with the training block and ``--print-recipe``)."""

    method: str | None = option(
        "--method", "-m", key="pretrain.method", help="simclr | mi-simclr | echoclr ({key})."
    )
    data: Path | None = data_option()
    out: Path | None = option("--out", help="Run dir. Default: <paths.runs>/pretrain/<method>.")


@training_command(PretrainOptions, _pretrain_core, rundir.pretrain_run_dir, "method")
def pretrain(res: Any) -> None:
    """Self-supervised pretraining: SimCLR, multi-instance SimCLR or EchoCLR."""
    report.info(f"pretraining done: {res.run_dir} (checkpoints/last.pt)")


# --------------------------------------------------------------------------- finetune
@dataclass(frozen=True)
class FinetuneOptions(Options):
    """``echoclr finetune`` (with the training block and ``--print-recipe``)."""

    section = "finetune"

    data: Path | None = data_option()
    task: str | None = option(
        "--task",
        "-t",
        key="finetune.task",
        help="Binary label column: as, lvh or any other ({key}).",
    )
    init: str | None = setting(
        help="random | kinetics | an SSL run dir | a checkpoint file "
        "(ours, published EchoCLR, torchvision) ({key}).",
    )
    frac: float | None = setting(help="Fraction of labeled training studies, 0-1 ({key}).")
    frac_seed: int | None = setting(help="Seed of the nested study subsets ({key}).")
    weights: Path | None = setting(
        help="Kinetics-400 weight file for --init kinetics ({key}).",
    )
    mode: str | None = setting(help="full | linear (frozen backbone) | lp-ft ({key}).")
    monitor: str | None = setting(
        help="Early stopping / best checkpoint: val_loss | val_auroc.",
    )
    out: Path | None = option(
        "--out", help="Run dir. Default: <paths.runs>/finetune/<task>-<init>-<frac>-s<seed>."
    )


# the model follows its init (arch and width of an SSL run, width 1.0 for Kinetics-400)
@training_command(FinetuneOptions, _finetune_core, rundir.finetune_run_dir, "task")
def finetune(res: Any) -> None:
    """Fine-tune a classifier on a label fraction; writes metrics.json with 95% CIs and predictions."""
    from echoclr_cli.metrics.splits import metrics_to_frame

    report.info(
        f"fine-tuned on {res.n_train_studies} studies ({res.n_train_positive_studies} positive), "
        f"best epoch {res.best_epoch}; run dir {res.run_dir}"
    )
    report.show_metrics(metrics_to_frame(res.metrics), f"{res.task}: metrics (95% CI)")
