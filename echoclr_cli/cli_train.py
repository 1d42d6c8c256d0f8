"""`echoclr pretrain` and `echoclr finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import report, rundir
from echoclr_cli.cli_app import app
from echoclr_cli.cli_options import (
    Common,
    DataOpt,
    Training,
    common_options,
    path_str,
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
    from echoclr_cli.recipe import format_recipe, recipe_rows

    typer.echo(f"recipe of `echoclr {section}` (profile {cfg.profile}):")
    typer.echo(format_recipe(recipe_rows(cfg, section)))


# --------------------------------------------------------------------------- pretrain
@app.command()
@common_options()
@training_options
def pretrain(
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="simclr | mi-simclr | echoclr (pretrain.method)."),
    ] = None,
    data: DataOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run dir. Default: <paths.runs>/pretrain/<method>.")
    ] = None,
    *,
    training: Training,
    common: Common,
    print_recipe: PrintRecipeOpt = False,
) -> None:
    """Self-supervised pretraining: SimCLR, multi-instance SimCLR or EchoCLR."""
    flags = training.flags("pretrain")
    flags.update({"pretrain.method": method, "paths.data": path_str(data)})
    cfg = common.resolve(section="pretrain", flags=flags)
    if print_recipe:
        _print_recipe(cfg, "pretrain")
        return
    from echoclr_cli.pretrain import run_pretrain

    with report.progress(f"pretrain {cfg.pretrain.method}") as on_event:
        res = run_pretrain(
            cfg,
            cfg.paths.data,
            out or rundir.pretrain_run_dir(cfg),
            **training.run_kwargs(),
            progress=on_event,
        )
    report.info(f"pretraining done: {res.run_dir} (checkpoints/last.pt)")


# --------------------------------------------------------------------------- finetune
@app.command()
@common_options()
@training_options
def finetune(
    data: DataOpt = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", "-t", help="Binary label column: as, lvh or any other (finetune.task)."
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="random | kinetics | an SSL run dir | a checkpoint file "
            "(ours, published EchoCLR, torchvision) (finetune.init).",
        ),
    ] = None,
    frac: Annotated[
        float | None,
        typer.Option("--frac", help="Fraction of labeled training studies, 0-1 (finetune.frac)."),
    ] = None,
    frac_seed: Annotated[
        int | None,
        typer.Option("--frac-seed", help="Seed of the nested study subsets (finetune.frac_seed)."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Kinetics-400 weight file for --init kinetics (finetune.weights)."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="full | linear (frozen backbone) | lp-ft (finetune.mode)."),
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option("--monitor", help="Early stopping / best checkpoint: val_loss | val_auroc."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run dir. Default: <paths.runs>/finetune/<task>-<init>-<frac>-s<seed>."
        ),
    ] = None,
    *,
    training: Training,
    common: Common,
    print_recipe: PrintRecipeOpt = False,
) -> None:
    """Fine-tune a classifier on a label fraction; writes metrics.json with 95% CIs and predictions."""
    flags = training.flags("finetune")
    flags.update(
        {
            "paths.data": str(data) if data else None,
            "finetune.task": task,
            "finetune.init": init,
            "finetune.frac": frac,
            "finetune.frac_seed": frac_seed,
            "finetune.weights": str(weights) if weights else None,
            "finetune.mode": mode,
            "finetune.monitor": monitor,
        }
    )
    cfg = common.resolve(section="finetune", flags=flags)
    from echoclr_cli.finetune import follow_init_model, run_finetune, user_model_keys

    cfg, followed = follow_init_model(cfg, user_model_keys(common.config, common.set_))
    if followed:
        report.info(followed)
    if print_recipe:
        _print_recipe(cfg, "finetune")
        return
    run_dir = out or rundir.finetune_run_dir(cfg)
    with report.progress(f"finetune {cfg.finetune.task}") as progress:
        res = run_finetune(
            cfg,
            cfg.paths.data,
            run_dir,
            **training.run_kwargs(),
            progress=progress,
        )
    from echoclr_cli.metrics import metrics_to_frame

    report.info(
        f"fine-tuned on {res.n_train_studies} studies ({res.n_train_positive_studies} positive), "
        f"best epoch {res.best_epoch}; run dir {res.run_dir}"
    )
    report.show_metrics(metrics_to_frame(res.metrics), f"{res.task}: metrics (95% CI)")
