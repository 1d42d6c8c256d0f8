"""The settings a command takes from what it reads rather than from the profile (``follow_data``,
called by ``build_config``): the frame size of the dataset or run, the published size and split
for a user archive, and the model of a fine-tune's init. A key the user set is never followed."""

from __future__ import annotations

from pathlib import Path

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError

FRAME_SIZE_KEY = "preprocess.size"  # set by `preprocess --size`, else it follows the data


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

    user_size = FRAME_SIZE_KEY in explicit
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
            f"run {run} was trained on {size} px frames but {FRAME_SIZE_KEY} is set to "
            f"{cfg.preprocess.size} px",
            fix=f"drop the {FRAME_SIZE_KEY} setting (commands take the frame size from the run)",
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
        if cfg.preprocess.input is not None and FRAME_SIZE_KEY not in explicit:
            frames = "paper, user archive"
    else:
        cfg, frames = frames_from_data(cfg, explicit, data, run)
    init = {"finetune": cfg.finetune.init, "sweep": "kinetics"}.get(section)
    if init is not None and (section != "sweep" or "kinetics" in cfg.sweep.inits):
        from echoclr_cli.finetune.run import follow_init_model

        cfg, line = follow_init_model(cfg, explicit, init=init)
        notes += [line] if line else []
    return cfg, frames, notes
