"""The `echoclr` command line. Parses, resolves the config, calls ONE core function, renders.

The app and its root options live in cli_app.py, shared options and config resolution in
cli_options.py, each command's own options in cli_params.py, and the commands in cli_data (synth, preprocess), cli_train (pretrain, finetune),
cli_results (evaluate, predict), cli_runs (sweep, check, demo, report) and cli_inspect (embed,
explain, export). Importing them registers the commands, in the order `echoclr --help` lists
them. Core modules are imported inside each command so that `echoclr --help` stays fast.
"""

from __future__ import annotations

import importlib

from echoclr_cli.cli_app import app

COMMAND_MODULES = ("cli_data", "cli_train", "cli_results", "cli_runs", "cli_inspect")
for _name in COMMAND_MODULES:
    importlib.import_module(f"echoclr_cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
