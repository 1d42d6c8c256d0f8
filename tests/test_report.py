"""report.py: the one progress renderer shows every event type; the settings line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from echoclr_cli import console as report
from echoclr_cli import events
from echoclr_cli.config.load import load_config


class FakeBar:
    """Records what the renderer asks of a rich Progress bar."""

    disable = False

    def __init__(self):
        self.updates: list[dict] = []

    def add_task(self, description, total=None, info=""):
        return 0

    def update(self, task, **fields):
        self.updates.append(fields)


def render(*evs, bar=None):
    buf = io.StringIO()
    r = report.Renderer("sweep", Console(file=buf, width=200, highlight=False), bar)
    for e in evs:
        r(e)
    return buf.getvalue().splitlines()


def test_every_event_type_is_rendered():
    """Each event type either prints a line or moves the bar (none is dropped)."""
    samples = {
        events.Note: events.Note("plan: 3 runs"),
        events.Status: events.Status("evaluating test"),
        events.Count: events.Count("preprocess", 5, 5),
        events.Step: events.Step(epoch=1, epochs=2, batch=3, batches=4, loss=0.5),
        events.Epoch: events.Epoch(epoch=1, epochs=2, row={"epoch": 1, "loss": 0.25}),
        events.EvalBatch: events.EvalBatch(batch=2, batches=7),
        events.RunStart: events.RunStart(index=1, total=3, run="runs/as/random/r1", resume=True),
        events.RunFailed: events.RunFailed(index=2, total=3, run="runs/x", error="no positive"),
        events.Eta: events.Eta(seconds=3723, runs_left=2, basis="measured on 1 finished run"),
    }
    assert set(samples) == set(events.EVENT_TYPES)
    for kind, event in samples.items():
        bar = FakeBar()
        lines = render(event, bar=bar)
        assert lines or bar.updates, f"{kind.__name__} shows nothing"
    bar = FakeBar()
    render(samples[events.EvalBatch], bar=bar)
    assert bar.updates[-1]["completed"] == 2 and bar.updates[-1]["total"] == 7
    assert "evaluating" in bar.updates[-1]["description"]
    bar = FakeBar()
    render(samples[events.Step], bar=bar)
    assert bar.updates[-1]["description"] == "sweep epoch 1/2" and bar.updates[-1]["completed"] == 3


def test_lines_of_a_sweep():
    lines = render(
        events.Note("6 runs (0 done, 0 to resume, 6 to train)"),
        events.RunStart(index=1, total=6, run="runs/as/random/r1_lr0.0001_s0"),
        events.Epoch(epoch=1, epochs=2, row={"epoch": 1, "loss": 0.5}, run="runs/as/random/r1"),
        events.RunFailed(index=2, total=6, run="runs/as/random/r0.5", error="no positive study"),
        events.Eta(seconds=3723, runs_left=4, basis="measured on 1 finished run"),
        events.Epoch(epoch=2, epochs=2, row={"epoch": 2, "step": 8, "loss": 0.25}),
        events.Status("predicting test"),
        events.Count("preprocess", 4, 4),
    )
    assert lines == [
        "6 runs (0 done, 0 to resume, 6 to train)",
        "[1/6] training runs/as/random/r1_lr0.0001_s0",  # a run's epochs go to the bar only
        "[2/6] FAILED runs/as/random/r0.5: no positive study",
        "estimated time left 1h02m for 4 run(s) (measured on 1 finished run)",
        "epoch 2/2: loss 0.2500",
        "predicting test",
        "preprocess: 4/4 done",  # no visible bar (a log): one line when the stage ends
    ]


def test_tagged_events_and_quiet(monkeypatch):
    seen = []
    tagged = events.in_run(seen.append, "runs/a")
    tagged(events.Status("evaluating val"))
    tagged(events.Eta(seconds=1, runs_left=1, basis="x"))  # has no run field: passed as is
    assert seen[0] == events.Status("evaluating val", run="runs/a") and seen[1].runs_left == 1
    count = events.counter(seen.append, "synth")
    count(1, 2)
    assert seen[-1] == events.Count("synth", 1, 2)
    assert events.in_run(None, "r") is None and events.counter(None, "s") is None
    monkeypatch.setattr(report, "QUIET", True)
    assert render(events.Note("hidden")) == []


def test_a_non_event_is_refused():
    with pytest.raises(TypeError, match="not a progress event"):
        render({"kind": "message", "text": "old spelling"})


def test_settings_line_names_profile_and_data_and_model_settings():
    demo = load_config(profile="demo")
    assert report.settings_line(demo, "pretrain", "auto") == (
        "profile demo (auto: CPU) | frames 64x64 | method echoclr | clip 4 | width 0.25 "
        "| batch 32 | EchoCLR order head frames (paper: linear) | device auto"
    )  # the demo's one non-published model option is said on the first line ...
    mi = demo.model_copy(
        update={"pretrain": demo.pretrain.model_copy(update={"method": "mi-simclr"})}
    )
    assert "order head" not in report.settings_line(mi, "pretrain")  # ... where it is used
    assert "order head frames" in report.settings_line(demo, "demo")
    assert "order head" not in report.settings_line(load_config(profile="paper"), "pretrain")
    assert report.settings_line(demo, "finetune", "demo") == (
        "profile demo | frames 64x64 | clip 4 | width 0.25 | batch 16 | device auto"
    )
    assert report.settings_line(demo, "preprocess") == "profile demo | frames 64x64"
    crop = demo.model_copy(
        update={"preprocess": demo.preprocess.model_copy(update={"resize": "sector_crop"})}
    )  # a non-published resize is said on the first line of the commands it shapes
    assert report.settings_line(crop, "preprocess").endswith(
        "| resize sector_crop (paper: whole_frame)"
    )
    assert "resize sector_crop" in report.settings_line(crop, "demo")
    assert report.settings_line(demo, "synth") == (
        "profile demo | 200 studies | raw frames 160x212 | dicom"
    )
    assert "batch 16 videos" in report.settings_line(demo, "evaluate")
    assert "pretrain clip 4 batch 32" in report.settings_line(demo, "demo")
    paper = load_config(profile="paper")
    assert report.settings_line(paper, "sweep", "auto").startswith(
        "profile paper (auto: CUDA) | frames 112x112 | clip 16 | width 1 | batch 88"
    )
