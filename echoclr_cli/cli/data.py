"""`echoclr synth` and `echoclr preprocess`: archive -> dataset dir."""

from __future__ import annotations

from echoclr_cli import console as report
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import Common, command_options, common_options
from echoclr_cli.cli.params import PreprocessOptions, SynthOptions
from echoclr_cli.events import counter


# --------------------------------------------------------------------------- synth
@app.command()
@common_options(device=False)
@command_options(SynthOptions)
def synth(*, opts: SynthOptions, common: Common) -> None:
    """Write a synthetic echo archive (DICOM/AVI/MP4 studies with known anatomy and labels)."""
    cfg = common.resolve(section="synth", flags=opts.flags())
    from echoclr_cli.synth.archive import synthesize, write_preview

    out = opts.out_dir if opts.out_dir is not None else cfg.paths.raw
    with report.progress("synth") as on_event:
        res = synthesize(cfg, out, progress=counter(on_event, "synth"))
    if opts.preview is not None:
        write_preview(out, opts.preview)
    report.show_synth(res)


# --------------------------------------------------------------------------- preprocess
@app.command()
@common_options(device=False)
@command_options(PreprocessOptions)
def preprocess(*, opts: PreprocessOptions, common: Common) -> None:
    """Raw archive -> de-identified, sector-masked 112x112 dataset (manifest.csv, videos/, skipped.csv)."""
    if opts.migrate is not None:
        from echoclr_cli.preprocess.migrate import migrate_dataset

        done = migrate_dataset(opts.migrate)
        report.info(f"migrated {opts.migrate}: {done['videos']} videos, status {done['status']}")
        return
    cfg = common.resolve(section="preprocess", flags=opts.flags())
    from echoclr_cli.preprocess.view_filter import preprocess_with_view_filter

    with report.progress("preprocess") as on_event:
        res, vf = preprocess_with_view_filter(  # = preprocess when no --view-model
            cfg,
            cfg.preprocess.input,
            cfg.paths.data,
            progress=counter(on_event, "preprocess"),
        )
    report.show_preprocess(res)
    if vf is not None:
        report.info(
            f"view filter ({cfg.preprocess.keep_view}): kept {vf.kept}, filtered {vf.filtered} "
            f"(skipped.csv, reason view_filter); predicted {vf.predicted} video(s), "
            f"top classes {vf.by_pred}"
        )
