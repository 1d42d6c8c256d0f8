"""Label presets: guideline definitions (severe AS, LVH by LV mass index) expanded into label
rules over the user's column names, and the rule list of ``--label-rule`` + ``--label-preset``."""

from __future__ import annotations

from dataclasses import dataclass

from echoclr_cli.data.rules import AS_NOT_SEVERE, AS_SEVERE, Rule, _show, grade_text, parse_rule
from echoclr_cli.errors import UserError


def _col(name: str) -> str:
    if "`" in name:
        raise UserError(f"column name {name!r} contains a backquote", fix="rename the column")
    return f"`{name}`"


@dataclass(frozen=True)
class Preset:
    doc: str
    columns: tuple[str, ...]  # parameter names that take a column
    required: tuple[str, ...]  # at least these (all of them)
    any_of: tuple[str, ...]  # at least one of these
    defaults: dict


PRESETS = {
    "as": Preset(
        "severe aortic stenosis (ACC/AHA, ESC/EACTS): Vmax >= 4 m/s or mean gradient >= 40 "
        "mmHg or AVA <= 1.0 cm2, or a grade column; columns vmax, mean_gradient, ava, grade (at "
        "least one); thresholds vmax_min, mean_gradient_min, ava_max (in your columns' units); "
        "grade: severe/critical -> 1, none/no/normal/trace/trivial/mild/mild-moderate/moderate/"
        "non-severe -> 0, any other text (e.g. moderate-severe) unknown and counted unless "
        "listed in severe=A|B or not_severe=C|D",
        ("vmax", "mean_gradient", "ava", "grade"), (), ("vmax", "mean_gradient", "ava", "grade"),
        {"vmax_min": 4.0, "mean_gradient_min": 40.0, "ava_max": 1.0, "severe": "",
         "not_severe": ""},
    ),
    "lvh": Preset(
        "left ventricular hypertrophy by LV mass index (ASE/EACVI 2015): > 95 g/m2 women, "
        "> 115 g/m2 men; columns lvmi, sex (both); sex values female (default F), male "
        "(default M), other values -> unknown; thresholds female_gt, male_gt",
        ("lvmi", "sex"), ("lvmi", "sex"), (),
        {"female": "F", "male": "M", "female_gt": 95.0, "male_gt": 115.0},
    ),
}  # fmt: skip


def expand_preset(spec: str) -> Rule:
    """``'as:vmax=AV_Vmax,mean_gradient=AV_MG,ava=AVA'`` (``label=NAME`` renames the label)
    -> the preset's :class:`Rule` over the user's columns."""
    name, _, args = spec.partition(":")
    name = name.strip().lower()
    if name not in PRESETS:
        raise UserError(f"label preset '{_show(spec)}': unknown preset '{name}' (known: "
                        f"{sorted(PRESETS)})", fix="write e.g. --label-preset 'as:vmax=AV_Vmax'")  # fmt: skip
    pre = PRESETS[name]
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        known = set(pre.columns) | set(pre.defaults) | {"label"}
        if not eq or not v or k not in known:
            raise UserError(
                f"label preset '{_show(spec)}': '{part}' is not KEY=VALUE with KEY in "
                f"{sorted(known)}",
                fix=f"preset {name}: {pre.doc}",
            )
        params[k] = v
    missing = [c for c in pre.required if c not in params]
    if missing or (pre.any_of and not any(c in params for c in pre.any_of)):
        need = missing or [f"one of {list(pre.any_of)}"]
        raise UserError(f"label preset '{_show(spec)}' needs your column name(s) for {need}",
                        fix=f"preset {name}: {pre.doc}")  # fmt: skip
    val = {**pre.defaults, **{k: v for k, v in params.items() if k in pre.defaults}}
    for k, v in val.items():
        if k.endswith(("_min", "_max", "_gt")):
            try:
                val[k] = float(v)
            except ValueError:
                raise UserError(f"label preset '{_show(spec)}': {k}={v!r} is not a number",
                                fix=f"preset {name}: {pre.doc}") from None  # fmt: skip
    label = params.get("label", name)
    guard: dict[str, set[str]] = {}
    if name == "as":
        parts = [f"{_col(params[c])} {op} {val[t]:g}" for c, op, t in (
            ("vmax", ">=", "vmax_min"), ("mean_gradient", ">=", "mean_gradient_min"),
            ("ava", "<=", "ava_max")) if c in params]  # fmt: skip
        if "grade" in params:
            more = {k: [grade_text(x.replace("'", "")) for x in str(val[k]).split("|") if x.strip()]
                    for k in ("severe", "not_severe")}  # fmt: skip
            pos = list(dict.fromkeys([*AS_SEVERE, *more["severe"]]))
            parts = [f"{_col(params['grade'])} == '{g}'" for g in pos] + parts
            # a grade outside the known ones is unknown (and counted), never "not severe"
            guard[params["grade"]] = {*pos, *AS_NOT_SEVERE, *more["not_severe"]}
        expr = " or ".join(parts)
    else:
        sex, lvmi = _col(params["sex"]), _col(params["lvmi"])
        f, m = (str(val[k]).replace("'", "") for k in ("female", "male"))
        expr = (f"({sex} == '{f}' and {lvmi} > {val['female_gt']:g}) or "
                f"({sex} == '{m}' and {lvmi} > {val['male_gt']:g})")  # fmt: skip
        guard[params["sex"]] = {grade_text(f), grade_text(m)}
    rule = parse_rule(f"{label}={expr}")
    rule.source, rule.guard = f"preset {spec}", guard
    return rule


def build_rules(rules: list[str], presets: list[str]) -> list[Rule]:
    """Parse every ``--label-rule`` and ``--label-preset`` (all before anything is read);
    the same label twice is refused."""
    out = [parse_rule(r) for r in rules] + [expand_preset(p) for p in presets]
    seen: dict[str, str] = {}
    for r in out:
        if r.label in seen:
            raise UserError(f"label '{r.label}' is defined twice ('{_show(seen[r.label])}' and "
                            f"'{_show(r.source)}')", fix="give each rule its own label name")  # fmt: skip
        seen[r.label] = r.source
    return out
