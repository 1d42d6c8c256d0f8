"""CLI wiring: each command parses, resolves config and calls ONE core function with it."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from echoclr_cli import cli

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, list(args))


def test_help_lists_commands_with_option_help():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("synth", "preprocess", "pretrain"):
        assert cmd in res.output


def test_every_option_of_every_command_has_help():
    import typer

    group = typer.main.get_command(cli.app)
    assert group.commands
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name}: {param.name} has no help"


def test_training_options_name_their_command_keys_and_meaning():
    """The training block is declared once, yet each command's help names its own keys, and
    --batch-size says what a batch is there (issue 24: pretrain's is the global batch)."""
    import typer

    group = typer.main.get_command(cli.app)
    helps = {
        name: {p.name: p.help for p in group.commands[name].params}
        for name in ("pretrain", "finetune")
    }
    assert "(pretrain.batch_size)" in helps["pretrain"]["batch_size"]
    assert "ALL processes" in helps["pretrain"]["batch_size"]
    assert "(finetune.batch_size)" in helps["finetune"]["batch_size"]
    assert "videos per process" in helps["finetune"]["batch_size"]
    assert helps["finetune"]["epochs"] == "Training epochs (finetune.epochs)."
    assert not any("<section>" in h for cmd in helps.values() for h in cmd.values())


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and "echoclr" in res.output


def test_unknown_key_in_yaml_refused_without_traceback(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("lerning_rate: 0.1\n")
    res = invoke("pretrain", "--config", str(y))
    assert res.exit_code == 1
    assert "lerning_rate" in res.output and "pretrain.optim.learning_rate" in res.output
    assert "Traceback" not in res.output


def test_pretrain_flags_reach_core(tmp_path, monkeypatch):
    seen = {}

    def fake(cfg, data_dir, out_dir, resume, overwrite, force, progress):
        seen.update(
            cfg=cfg, data=data_dir, out=out_dir, resume=resume, overwrite=overwrite, force=force
        )

        class R:
            run_dir = out_dir

        return R()

    import echoclr_cli.pretrain.run as pre

    monkeypatch.setattr(pre, "run_pretrain", fake)
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"pretrain": {"epochs": 3, "temperature": 0.2}}))
    res = invoke(
        "pretrain",
        "--method",
        "mi-simclr",
        "--data",
        str(tmp_path / "d"),
        "--epochs",
        "5",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--seed",
        "7",
        "--workers",
        "0",
        "--config",
        str(y),
        "--set",
        "pretrain.temperature=0.5",
        "--device",
        "cpu",
        "--resume",
        "--profile",
        "demo",
    )
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.pretrain.method == "mi-simclr"
    assert cfg.pretrain.epochs == 5  # flag beats YAML
    assert cfg.pretrain.temperature == 0.5  # --set beats YAML
    assert cfg.pretrain.batch_size == 8 and cfg.pretrain.optim.learning_rate == 0.01
    assert cfg.runtime.seed == 7 and cfg.runtime.workers == 0 and cfg.runtime.device == "cpu"
    assert cfg.model.width == 0.25  # demo profile
    assert seen["data"] == tmp_path / "d"
    assert seen["out"] == Path("runs/pretrain/mi-simclr")
    assert seen["resume"] is True and seen["overwrite"] is False
    # the first line states the profile and the settings that shape data and model
    assert res.output.splitlines()[0] == (
        "profile demo | frames 64x64 | method mi-simclr | clip 4 | width 0.25 | batch 8 | device cpu"
    )


def test_user_error_exit_code_and_verbose_traceback(monkeypatch):
    import echoclr_cli.pretrain.run as pre
    from echoclr_cli.errors import UserError

    def boom(*a, **k):
        raise UserError("dataset dir data/echo has no manifest.csv", fix="run echoclr preprocess")

    monkeypatch.setattr(pre, "run_pretrain", boom)
    res = invoke("pretrain", "--device", "cpu")
    assert res.exit_code == 1
    assert "manifest.csv" in res.output and "echoclr preprocess" in res.output
    assert "Traceback" not in res.output
    res = invoke("pretrain", "--device", "cpu", "--verbose")
    assert "Traceback" in res.output
    assert "resolved config" in res.output


def test_preempted_exits_143(monkeypatch):
    import echoclr_cli.pretrain.run as pre
    from echoclr_cli.errors import Preempted

    def pre_empt(*a, **k):
        raise Preempted("SIGTERM at epoch 1 batch 2")

    monkeypatch.setattr(pre, "run_pretrain", pre_empt)
    res = invoke("pretrain", "--device", "cpu")
    assert res.exit_code == 143


def test_check_for_pretrain_reports_batches(tmp_path):
    from helpers import make_dataset

    data = make_dataset(tmp_path, n_studies=8)
    res = invoke(
        "check", "--data", str(data), "--task", "as", "--for", "pretrain", "--profile", "demo"
    )
    assert res.exit_code == 0, res.output
    assert "pretrain batches" in res.output
    res = invoke("check", "--data", str(data), "--for", "nonsense")  # a click choice
    assert res.exit_code == 2 and "nonsense" in res.output and "pretrain" in res.output


def test_synth_preview_writes_png(tmp_path):
    out = tmp_path / "raw"
    res = invoke(
        "synth", str(out), "--studies", "2", "--seed", "1", "--preview", str(tmp_path / "p.png"),
        "--set", "synth.height=96", "--set", "synth.width=128", "--set", "synth.max_frames=20",
        "--set", "synth.min_frames=16", "--set", "synth.workers=1", "--profile", "demo",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert (out / "labels.csv").exists()


def test_every_command_starts_with_the_settings_line(tmp_path, monkeypatch):
    """`--profile auto` says what it resolved to; the line comes before any other output."""
    import echoclr_cli.training.preflight as check_mod

    def fake_check(cfg, data_dir, task=None, section=None):
        raise AssertionError(f"reached the core with section={section}")

    monkeypatch.setattr(check_mod, "run_check", fake_check)
    res = invoke("check", "--data", str(tmp_path), "--for", "finetune")
    first = res.output.splitlines()[0]
    assert first.startswith("profile demo (auto: CPU) | frames 64x64 | clip ")
    assert "section=finetune" in repr(res.exception)  # --for reached the core as a string


def test_common_options_adds_the_tail_and_passes_it_as_common():
    import inspect

    import pytest

    from echoclr_cli.cli.common import Common, common_options

    @common_options(device=False)
    def cmd(x: int = 1, *, common: Common, last: bool = False):
        return x, common, last

    names = list(inspect.signature(cmd).parameters)
    assert names == ["x", "config", "set_", "profile", "verbose", "quiet", "last"]
    x, common, last = cmd(x=2, config=None, set_=["a=1"], profile="demo", verbose=True,
                          quiet=False, last=True)  # fmt: skip
    assert (x, last) == (2, True)
    assert common == Common(set_=["a=1"], profile="demo", verbose=True)
    with pytest.raises(TypeError, match="common"):
        common_options()(lambda x=1: x)


def test_training_options_bundle_the_training_block_as_training():
    import functools
    import inspect

    import pytest

    from echoclr_cli.cli.common import Common, Training, common_options, training_options

    @common_options(device=False)
    @functools.partial(training_options, section="finetune")
    def cmd(x: int = 1, *, training: Training, common: Common):
        return x, training

    names = list(inspect.signature(cmd).parameters)
    assert names[:9] == ["x", "resume", "overwrite", "force", "epochs", "batch_size", "lr",
                         "seed", "workers"]  # fmt: skip
    assert names[9:] == ["config", "set_", "profile", "verbose", "quiet"]
    x, training = cmd(x=3, resume=True, overwrite=False, force=False, epochs=2, batch_size=None,
                      lr=0.1, seed=7, workers=None, config=None, set_=None, profile="demo",
                      verbose=False, quiet=True)  # fmt: skip
    assert x == 3
    assert training.run_kwargs() == {"resume": True, "overwrite": False, "force": False}
    assert training.flags("finetune") == {
        "finetune.epochs": 2,
        "finetune.batch_size": None,
        "finetune.optim.learning_rate": 0.1,
        "runtime.seed": 7,
        "runtime.workers": None,
    }
    with pytest.raises(TypeError, match="bundled options need a `training`"):
        training_options(lambda x=1: x, "pretrain")


def test_command_options_bundle_a_commands_own_options_as_opts():
    import inspect

    import pytest

    from echoclr_cli.cli.common import Common, command_options, common_options
    from echoclr_cli.cli.results import EvaluateOptions
    from echoclr_cli.cli.runs import SweepOptions

    @common_options()
    @command_options(SweepOptions)
    def cmd(*, opts: SweepOptions, common: Common):
        return opts, common

    params = inspect.signature(cmd).parameters
    assert list(params)[:4] == ["data", "out", "ratios", "inits"]
    assert list(params)[-7:] == ["workers", "config", "set_", "profile", "device", "verbose",
                                 "quiet"]  # fmt: skip
    given = {"ratios": "0.01,1.0", "pretrain_missing": True, "slurm_gpus": 2, "quiet": True,
             "low_ratio_seeds": "0,1,2"}  # fmt: skip
    opts, common = cmd(**{n: p.default for n, p in params.items()} | given)
    assert common == Common(quiet=True)
    flags = opts.flags()
    assert flags["sweep.ratios"] == [0.01, 1.0] and flags["sweep.pretrain_missing"] is True
    assert flags["sweep.slurm.gpus"] == 2 and flags["sweep.seeds"] is None
    assert flags["sweep.launcher"] is None and flags["paths.data"] is None
    assert flags["sweep.low_ratio_seeds"] == [0, 1, 2]

    evaluate = command_options(EvaluateOptions)(lambda *, opts: opts)
    run = inspect.signature(evaluate).parameters["run"]
    assert run.default is inspect.Parameter.empty  # a field without default: required argument
    with pytest.raises(TypeError, match="opts"):
        command_options(EvaluateOptions)(lambda x=1: x)


def test_common_resolve_applies_flags_then_set(monkeypatch):
    from echoclr_cli.cli.common import Common

    common = Common(set_=["runtime.seed=7"], profile="demo", device="cpu", quiet=True)
    cfg = common.resolve(section="pretrain", flags={"runtime.seed": 3, "runtime.workers": 0})
    assert cfg.runtime.seed == 7 and cfg.runtime.workers == 0 and cfg.runtime.device == "cpu"


def test_parse_list_is_the_one_list_parser():
    import pytest

    from echoclr_cli.cli.common import parse_list
    from echoclr_cli.errors import UserError

    assert parse_list("0.01, 0.1,1.0", float, "--ratios") == [0.01, 0.1, 1.0]
    assert parse_list("as,lvh", str, "--tasks") == ["as", "lvh"]
    with pytest.raises(UserError, match="--seeds"):
        parse_list("0,x", int, "--seeds")
    with pytest.raises(UserError, match="--split is empty"):
        parse_list(" , ", str, "--split")


def test_evaluate_and_embed_split_lists_reach_the_core_parsed(tmp_path, monkeypatch):
    import echoclr_cli.analysis.embed as embed_mod
    import echoclr_cli.inference.evaluate as evaluate_mod

    seen = []

    def fake(*args, splits, **kwargs):
        seen.append(splits)
        raise SystemExit(0)

    monkeypatch.setattr(evaluate_mod, "evaluate_run", fake)
    monkeypatch.setattr(embed_mod, "run_embed", fake)
    assert invoke("evaluate", str(tmp_path), "--split", " test, ext_test,").exit_code == 0
    assert invoke("embed", str(tmp_path), "--splits", "val ,test").exit_code == 0
    assert seen == [["test", "ext_test"], ["val", "test"]]
    res = invoke("evaluate", str(tmp_path), "--split", ",")
    assert res.exit_code == 1 and "--split is empty" in res.output and len(seen) == 2


def _option_classes() -> list[type]:
    """Every bundle of options: the common tail, the training block, each command's own."""
    from echoclr_cli.cli.common import Common, Options, Training

    return [Common, Training, *Options.__subclasses__()]


def test_every_option_with_a_config_key_sets_exactly_that_key():
    import dataclasses
    import typing

    from echoclr_cli.cli.common import Common, Training, config_flags, keyed_fields
    from echoclr_cli.config.load import all_keys

    valid = set(all_keys())
    n_keyed = 0
    for cls in _option_classes():
        hints = typing.get_type_hints(cls)
        required = {f.name: Path("x") for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING}  # fmt: skip

        def flags(opts, cls=cls):
            if cls is Training:
                return opts.flags("finetune")
            return config_flags(opts) if cls is Common else opts.flags()

        assert all(v is None for v in flags(cls(**required)).values()), cls.__name__
        for name, meta in keyed_fields(cls).items():
            n_keyed += 1
            key = meta["key"].replace("<section>", "finetune")
            assert key in valid and meta["key"].replace("<section>", "pretrain") in valid, key
            hint = hints[name]
            if meta["items"] is not None:
                value, want = "1, 2", [meta["items"]("1"), meta["items"]("2")]
            elif hint is bool:
                value, want = True, True
            elif Path in typing.get_args(hint):
                value, want = Path("some/dir"), "some/dir"
            elif list[str] in typing.get_args(hint):
                value, want = ["a", "b"], ["a", "b"]
            else:
                value = want = object()  # passed on as it is
            given = {
                k: v for k, v in flags(cls(**required | {name: value})).items() if v is not None
            }
            assert given == {key: want}, f"{cls.__name__}.{name}"
    assert n_keyed >= 50  # the test sees the options (not a vacuous pass)


def test_no_config_key_is_written_twice_in_cli():
    """A key an option sets is written once per option that sets it (``option(..., key=KEY)``)
    or not at all (``setting``: derived from the field name; help texts say ``{key}``): no
    hand-written flags dict or help text repeats it."""
    import ast
    import re
    from collections import Counter

    from echoclr_cli.cli.common import FIELD_KEY, keyed_fields

    options = {  # a shared option (--data, --workers) counts once
        (m["key"], m["name"], m["declared"] == FIELD_KEY)
        for c in _option_classes() for m in keyed_fields(c).values()
    }  # fmt: skip
    declared = Counter(key for key, _, derived in options if not derived)
    declared.update({key: 0 for key, _, derived in options if derived})
    assert sum(derived for *_, derived in options) >= 30  # most keys are derived
    written: Counter = Counter()
    for path in Path(cli.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    written.update(re.findall(r"<section>(?:\.\w+)+|\b[a-z_]+(?:\.[a-z_]+)+",
                                              node.value))  # fmt: skip
    twice = {k: (written[k], n) for k, n in declared.items() if written[k] != n}
    assert declared and not twice, f"key: (times written, options setting it) {twice}"
