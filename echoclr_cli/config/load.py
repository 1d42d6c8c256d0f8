"""Reading and writing configs: YAML/--set layering over the profiles, key suggestions, the
resolved config saved with a run and the difference between two configs.

The typed tree itself (sections, defaults, validation) is ``echoclr_cli.config.schema``.
"""

from __future__ import annotations

import difflib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from echoclr_cli.config.schema import CONFIG_PACKAGE, CONFIG_SUBDIR, Config
from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- helpers
def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key path of the config tree (leaves and sections)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, path + "."))
    return keys


def suggest_key(bad: str, prefer: str | None = None) -> str | None:
    """Closest valid dotted key for a bad one (matched on the leaf name, then the whole path)."""
    keys = all_keys()
    leaf = bad.rsplit(".", 1)[-1]
    leaves: dict[str, list[str]] = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    best = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    if best:
        cands = leaves[best[0]]
        if prefer:
            cands = sorted(cands, key=lambda k: (not k.startswith(prefer + "."), len(k)))
        parent = bad.rsplit(".", 1)[0] if "." in bad else None
        if parent:
            same = [c for c in cands if c.startswith(parent + ".")]
            if same:
                return same[0]
        return cands[0]
    close = difflib.get_close_matches(bad, keys, n=1, cutoff=0.5)
    return close[0] if close else None


def _format_error(err: ValidationError, source: str, prefer: str | None) -> str:
    msgs = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = suggest_key(key, prefer)
            m = f"unknown key '{key}'"
            m += f" (did you mean '{hint}'?)" if hint else ""
        else:
            m = f"bad value for '{key}': {e['msg']} (got {e.get('input')!r})"
        msgs.append(m)
    return f"{source}: " + "; ".join(msgs)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Path | str) -> dict:
    """A ``--config`` file: a path, or a config shipped with the package named by its place in
    ``echoclr_cli/configs/`` (``sweep/paper``, ``sweep/paper.yaml``, ``configs/sweep/paper.yaml``),
    so the README's names work after ``pip install``. A real path wins when it exists."""
    path = Path(path)
    if path.is_file():
        return _parse_yaml(path.read_text(), str(path))
    if path.exists():
        raise UserError(f"--config {path} is not a file", fix="pass a YAML file")
    name = packaged_config_name(str(path))
    if name is None:
        raise UserError(
            f"config file not found: {path} (neither a file nor a packaged config)",
            fix=f"check the path, or name a packaged config: {', '.join(packaged_configs())}",
        )
    return _parse_yaml(config_resource(f"{name}.yaml").read_text(), f"{name}.yaml (package)")


def _parse_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({e})", fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: top level must be a mapping of keys", fix="use 'key: value' lines"
        )
    return data


def parse_set(items: list[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(
                f"--set '{item}' is not key=value", fix="write e.g. --set pretrain.epochs=5"
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def config_resource(relative: str) -> Traversable:
    """A shipped config file (``demo.yaml``, ``sweep/paper.yaml``), from the installed package."""
    return resources.files(CONFIG_PACKAGE).joinpath(CONFIG_SUBDIR, *relative.split("/"))


def packaged_configs() -> list[str]:
    """The names of the configs shipped in ``echoclr_cli/configs/``: ``demo``, ``sweep/paper``, ..."""

    def walk(node: Traversable, prefix: str) -> list[str]:
        names = []
        for child in node.iterdir():
            if child.is_dir():
                names += walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                names.append(prefix + child.name.removesuffix(".yaml"))
        return names

    return sorted(walk(resources.files(CONFIG_PACKAGE).joinpath(CONFIG_SUBDIR), ""))


def packaged_config_name(text: str) -> str | None:
    """``sweep/paper`` for ``sweep/paper``, ``sweep/paper.yaml`` or ``configs/sweep/paper.yaml``;
    None when no shipped config has that name (only listed names, so never a path outside)."""
    name = text.replace("\\", "/").removeprefix("./").removeprefix(f"{CONFIG_SUBDIR}/")
    name = name.removesuffix(".yaml")
    return name if name in packaged_configs() else None


def read_profile(name: str) -> dict:
    """The YAML of profile ``name`` shipped with the package (``configs/<name>.yaml``)."""
    res = config_resource(f"{name}.yaml")
    if not res.is_file():
        raise UserError(
            f"profile file configs/{name}.yaml is missing from the installed package",
            fix="reinstall echoclr (pip install .) so that echoclr_cli/configs/ is included",
        )
    return _parse_yaml(res.read_text(), f"configs/{name}.yaml (package)")


def cuda_available() -> bool:
    from echoclr_cli.runtime import cuda_available as _cuda_available  # the one CUDA decision

    return _cuda_available()


def resolve_profile(profile: str, device: str = "auto") -> str:
    """auto -> paper when the run will use CUDA, demo otherwise (documented in README)."""
    if profile != "auto":
        return profile
    if device.startswith("cuda"):
        return "paper"
    if device == "auto" and cuda_available():
        return "paper"
    return "demo"


def load_config(
    config_files: list[Path] | None = None,
    overrides: dict | None = None,
    profile: str = "paper",
    prefer: str | None = None,
) -> Config:
    """Build the resolved config. ``overrides`` is a nested dict (from flags and --set)."""
    data: dict[str, Any] = {}
    if profile not in ("paper", "demo"):
        raise UserError(f"unknown profile '{profile}'", fix="use --profile auto, paper or demo")
    if profile != "paper":
        data = deep_merge(data, read_profile(profile))
    data["profile"] = profile
    for f in config_files or []:
        layer = read_yaml(f)
        try:
            Config.model_validate(deep_merge(data, layer))
        except ValidationError as e:
            raise UserError(
                _format_error(e, str(f), prefer), fix="fix the key or value in the YAML"
            ) from None
        data = deep_merge(data, layer)
    if overrides:
        data = deep_merge(data, overrides)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        src = "command-line options" if overrides else "config"
        raise UserError(_format_error(e, src, prefer), fix="fix the option or --set key") from None
    return cfg


PRIVATE = "<private>"  # what every config dump shows instead of a secret or an input path
# Settings that live only in DATA/private/ (docs/PRIVACY.md): the id salt, and the paths of the
# raw inputs (private/inputs.json). Never in a config.yaml, a checkpoint, sweep.yaml, a report
# or a --verbose print.
PRIVATE_KEYS = (
    ("preprocess", "salt"),
    ("preprocess", "input"),
    ("preprocess", "labels"),
    ("preprocess", "external_input"),
)


def redact_config(data: dict) -> dict:
    """A config dict (resolved, or read back from an older run's file) with each set value of
    :data:`PRIVATE_KEYS` replaced by ``<private>``; unset ones stay ``null`` (nothing hidden).
    The one redaction every config dump goes through."""
    out = dict(data)
    for section, key in PRIVATE_KEYS:
        node = out.get(section)
        if isinstance(node, dict) and node.get(key) not in (None, ""):
            out[section] = {**node, key: PRIVATE}
    return out


def config_to_dict(cfg: BaseModel, *, private: bool = False) -> dict:
    """The resolved config as plain data, redacted (:func:`redact_config`) for anything that
    is written or printed. ``private=True``: with the secrets, for building another config in
    memory only (never dump it)."""
    data = cfg.model_dump(mode="json")
    return data if private else redact_config(data)


def save_config(cfg: BaseModel, path: Path) -> None:
    from echoclr_cli.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    changed = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        path = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(diff_configs(a, b, path + "."))
        elif a != b:
            changed.append(path)
    return changed
