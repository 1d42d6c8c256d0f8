"""The Typer app and its root options; the commands register on it from the cli/ modules."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from echoclr_cli import __version__

app = typer.Typer(
    name="echoclr",
    help="EchoCLR for echocardiography: raw DICOM -> dataset -> self-supervised pretraining -> "
    "label-efficient classifiers -> AUROC/AUPR tables with confidence intervals.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"echoclr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = None,
    allow_failed_dataset: Annotated[
        bool,
        typer.Option(
            "--allow-failed-dataset",
            help="Use a dataset whose preprocess failed or did not finish (dataset.json status).",
        ),
    ] = False,
) -> None:
    """EchoCLR for echocardiography."""
    if allow_failed_dataset:
        os.environ["ECHOCLR_ALLOW_FAILED_DATASET"] = "1"  # read by data.manifest.load_manifest
