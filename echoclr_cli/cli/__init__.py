"""The `echoclr` command line. Parses, resolves the config, calls ONE core function, renders.

The app and its root options live in cli/app.py, shared options and config resolution in
cli/common.py, and the commands, each beside its own options, in cli/data.py (synth, preprocess),
cli/train.py (pretrain, finetune), cli/results.py (evaluate, predict), cli/runs.py (sweep, check,
demo, report) and cli/inspect.py (embed, explain, export). Importing them registers the commands,
in the order `echoclr --help` lists them. Core modules are imported inside each command so that
`echoclr --help` stays fast.
"""

from __future__ import annotations

import importlib

from echoclr_cli.cli.app import app

COMMAND_MODULES = ("data", "train", "results", "runs", "inspect")
for _name in COMMAND_MODULES:
    importlib.import_module(f"echoclr_cli.cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
