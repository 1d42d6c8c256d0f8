"""`echoclr pretrain` and `echoclr finetune`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

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


def _print_recipe(cfg, section: str) -> None:
    from echoclr_cli.config.recipe import format_recipe, recipe_rows

    typer.echo(f"recipe of `echoclr {section}` (profile {cfg.profile}):")
    typer.echo(format_recipe(recipe_rows(cfg, section)))


# --------------------------------------------------------------------------- pretrain
@dataclass(frozen=True)
class PretrainOptions(Options):
    """``echoclr pretrain`` (with the training block and ``--print-recipe``)."""

    method: str | None = option(
        "--method", "-m", key="pretrain.method", help="simclr | mi-simclr | echoclr ({key})."
    )
    data: Path | None = data_option()
    out: Path | None = option("--out", help="Run dir. Default: <paths.runs>/pretrain/<method>.")


@app.command()
@common_options()
@training_options
@command_options(PretrainOptions)
def pretrain(
    *,
    opts: PretrainOptions,
    training: Training,
    common: Common,
    print_recipe: PrintRecipeOpt = False,
) -> None:
    """Self-supervised pretraining: SimCLR, multi-instance SimCLR or EchoCLR."""
    cfg = common.resolve(
        section="pretrain", flags=training.flags("pretrain") | opts.flags(), data=True
    )
    if print_recipe:
        _print_recipe(cfg, "pretrain")
        return
    from echoclr_cli.pretrain.run import run_pretrain

    with report.progress(f"pretrain {cfg.pretrain.method}") as on_event:
        res = run_pretrain(
            cfg,
            cfg.paths.data,
            opts.out or rundir.pretrain_run_dir(cfg),
            **training.run_kwargs(),
            progress=on_event,
        )
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


@app.command()
@common_options()
@training_options
@command_options(FinetuneOptions)
def finetune(
    *,
    opts: FinetuneOptions,
    training: Training,
    common: Common,
    print_recipe: PrintRecipeOpt = False,
) -> None:
    """Fine-tune a classifier on a label fraction; writes metrics.json with 95% CIs and predictions."""
    # the model follows its init (arch and width of an SSL run, width 1.0 for Kinetics-400)
    cfg = common.resolve(
        section="finetune", flags=training.flags("finetune") | opts.flags(), data=True
    )
    from echoclr_cli.finetune.run import run_finetune

    if print_recipe:
        _print_recipe(cfg, "finetune")
        return
    run_dir = opts.out or rundir.finetune_run_dir(cfg)
    with report.progress(f"finetune {cfg.finetune.task}") as progress:
        res = run_finetune(
            cfg,
            cfg.paths.data,
            run_dir,
            **training.run_kwargs(),
            progress=progress,
        )
    from echoclr_cli.metrics.splits import metrics_to_frame

    report.info(
        f"fine-tuned on {res.n_train_studies} studies ({res.n_train_positive_studies} positive), "
        f"best epoch {res.best_epoch}; run dir {res.run_dir}"
    )
    report.show_metrics(metrics_to_frame(res.metrics), f"{res.task}: metrics (95% CI)")
