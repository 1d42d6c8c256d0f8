"""`echoclr report`: one self-contained HTML (plus Markdown and a model-card JSON) for a run or sweep.

The HTML has inline CSS and every figure as a base64 PNG (``data:`` URI): no external resource,
so it opens offline and can be attached to a submission. The Markdown holds the same text with
the figures as PNG files in ``<stem>_files/``. Nothing public carries an absolute path, a
salt or an original id: inputs are named by their role (``<dataset>``, ``<archive>``), the config
is redacted (``report.facts.redact``: the salt and raw input paths are ``<private>``).

Layout: ``Doc`` (the two renderings), ``run_sections`` (one fine-tune run), ``sweep_sections``
(a sweep dir), ``build_report`` (detects which, writes the three files). An existing report,
Markdown, model card or ``<stem>_files/`` is refused without ``overwrite``; with it, only the
files this report wrote before (``.echoclr-files.json`` beside it) are replaced or removed.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from echoclr_cli import __version__
from echoclr_cli.errors import UserError
from echoclr_cli.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    replace_own_files,
)
from echoclr_cli.report.facts import SPLIT_ORDER, RunFacts, png_of
from echoclr_cli.report.sections import data_section, methods_note, recipe_section, results_sections
from echoclr_cli.report.tripod import checklist, model_card

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9;line-height:1.45;font-size:14px}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:2px solid #2a6f97;
padding-bottom:3px;margin-top:34px}h3{font-size:15px;margin:18px 0 6px;color:#2a6f97}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
th,td{border:1px solid #d5dae1;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef2f6}tr:nth-child(even) td{background:#fafbfc}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:12px;color:#555}pre{background:#f3f5f7;padding:8px;overflow-x:auto;
font-size:12px;max-height:420px}.meta{color:#666;font-size:12.5px}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px;margin:8px 0}
.note{background:#eef6fb;border-left:4px solid #2a6f97;padding:6px 10px;margin:8px 0}
.s-report{color:#176d3b;font-weight:600}.s-partly{color:#a86200;font-weight:600}
.s-author{color:#9b1c31;font-weight:600}nav ol{columns:2;font-size:13px}
"""


# --------------------------------------------------------------------------- document builder
class Doc:
    """Builds the HTML and the Markdown side by side; figures are kept as PNG bytes."""

    def __init__(self, title: str):
        self.title = title
        self.html: list[str] = []
        self.md: list[str] = [f"# {md_text(title)}\n"]
        self.toc: list[tuple[str, str]] = []
        self.figures: list[tuple[str, bytes]] = []

    def section(self, anchor: str, title: str) -> None:
        used = {a for a, _ in self.toc}
        base, k = anchor, 2
        while anchor in used:  # a sweep report repeats run sections
            anchor, k = f"{base}-{k}", k + 1
        self.toc.append((anchor, title))
        self.html.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        self.md.append(f"\n## {md_text(title)}\n")

    def sub(self, title: str) -> None:
        self.html.append(f"<h3>{html.escape(title)}</h3>")
        self.md.append(f"\n### {md_text(title)}\n")

    def para(self, text: str, cls: str = "") -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        prefix = {"warn": "> **Warning:** ", "note": "> "}.get(cls, "")
        self.md.append(f"{prefix}{md_text(text)}\n")

    def bullets(self, items: list[str]) -> None:
        if not items:
            return
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md.append("\n".join(f"- {md_text(i)}" for i in items) + "\n")

    def code(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", text)), default=0))
        self.md.append(f"{fence}\n{text.rstrip()}\n{fence}\n")  # shown as text, HTML included

    def table(self, df: pd.DataFrame, classes: Mapping[str, Callable[[Any], str]] | None = None):
        """A table of ``df`` (index dropped); ``classes``: column -> cell value -> CSS class."""
        if df is None or df.empty:
            self.para("(no rows)")
            return
        cols = [str(c) for c in df.columns]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = []
        for row in df.itertuples(index=False):
            cells = []
            for c, v in zip(cols, row, strict=True):
                cls = (classes or {}).get(c)
                attr = f' class="{cls(v)}"' if cls else ""
                cells.append(f"<td{attr}>{html.escape(_text(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
                         "</table>")  # fmt: skip
        md = ["| " + " | ".join(md_text(c).replace("|", "/") for c in cols) + " |",
              "|" + "---|" * len(cols)]  # fmt: skip
        for row in df.itertuples(index=False):
            md.append("| " + " | ".join(md_text(_text(v)).replace("|", "/") for v in row) + " |")
        self.md.append("\n".join(md) + "\n")

    def figure(self, png: bytes | None, caption: str) -> None:
        if png is None:
            return
        name = f"fig{len(self.figures) + 1:02d}.png"
        self.figures.append((name, png))
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        self.html.append(
            f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        cap = md_text(caption)
        self.md.append(f"![{cap}]({{files}}/{name})\n\n*{cap}*\n")

    def render_html(self, subtitle: str) -> str:
        toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.toc)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{html.escape(self.title)}</h1>"
            f'<p class="meta">{html.escape(subtitle)}</p><nav><ol>{toc}</ol></nav>'
            + "\n".join(self.html)
            + "</main></body></html>\n"
        )

    def render_md(self, subtitle: str, files_dir: str) -> str:
        text = "\n".join([self.md[0], f"*{md_text(subtitle)}*\n", *self.md[1:]])
        return text.replace("{files}", files_dir)


def md_text(text: Any) -> str:
    """Text for the Markdown report: HTML (``<``, ``>``, ``&``) escaped, so a name or value in
    the report shows as text in every Markdown viewer instead of running as HTML."""
    return html.escape(str(text), quote=False)


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


# --------------------------------------------------------------------------- detection
def detect_kind(path: Path) -> str:
    """``"run"`` (fine-tune run dir) or ``"sweep"`` (sweep dir); UserError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory", fix="pass a fine-tune run dir or sweep dir")
    if (path / "plan.csv").exists():
        return "sweep"
    if (path / "metrics.json").exists():
        return "run"
    raise UserError(
        f"{path} has neither metrics.json (fine-tune run) nor plan.csv (sweep)",
        fix="pass the --out dir of `echoclr finetune` or `echoclr sweep` once it has results",
    )


@dataclass
class ReportResult:
    """What ``build_report`` wrote."""

    kind: str
    html: Path
    markdown: Path
    model_card: Path
    n_figures: int
    sections: list[str] = field(default_factory=list)


def output_paths(out: Path) -> tuple[Path, Path, Path, Path]:
    """``report.html`` -> (html, ``report.md``, ``report_files/``, ``report.model_card.json``)."""
    out = Path(out)
    stem = out.with_suffix("")
    return (
        out,
        stem.with_suffix(".md"),
        stem.parent / f"{stem.name}_files",
        stem.parent / f"{stem.name}.model_card.json",
    )


def build_report(
    path: Path,
    out: Path,
    data_dir: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> ReportResult:
    """Write the report of a run or sweep dir ``path`` to ``out`` (HTML), its Markdown and
    figures beside it, and the model card JSON.

    ``options`` override the evaluation settings used when clinical metrics must be (re)computed
    from the prediction CSVs: ``at_sensitivity, at_threshold, calibrate, n_boot``. ``data_dir``
    overrides the dataset recorded in the run (for counts, skipped reasons and subgroups).
    """
    path = Path(path)
    html_path, md_path, files_dir, card_path = output_paths(out)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {html_path} must end in .html", fix="e.g. --out report.html")
    existing = [p for p in (html_path, md_path, files_dir, card_path) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists", fix="pass --overwrite or another --out")
    kind = detect_kind(path)
    say = progress or (lambda _m: None)
    if kind == "run":
        facts = RunFacts.load(path, data_dir, options, say)
        title = f"echoclr report: '{facts.task}' model ({path.name})"
        doc = Doc(title)
        card_facts = run_sections(doc, facts)
    else:
        from echoclr_cli.report.sweep import sweep_sections

        title = f"echoclr report: label-efficiency sweep ({path.name})"
        doc = Doc(title)
        card_facts = sweep_sections(doc, path, data_dir, options, say)
    common_sections(doc, card_facts)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"generated {stamp} by echoclr {__version__}; every figure is embedded"

    def fill(stage: Path) -> None:
        atomic_write_text(stage / html_path.name, doc.render_html(subtitle))
        for name, png in doc.figures:
            atomic_write(stage / files_dir.name / name, lambda f, b=png: f.write(b))
        atomic_write_text(stage / md_path.name, doc.render_md(subtitle, files_dir.name))
        atomic_write_json(stage / card_path.name, model_card(card_facts))

    # --overwrite replaces this report's own earlier files (.echoclr-files.json beside it):
    # a file someone else put in <name>_files/ or beside the report stays
    replace_own_files(html_path.parent, f"report:{html_path.name}", fill, overwrite=overwrite)
    return ReportResult(kind, html_path, md_path, card_path, len(doc.figures),
                        [t for _, t in doc.toc])  # fmt: skip


# --------------------------------------------------------------------------- run report
def run_sections(doc: Doc, facts: RunFacts, heading: bool = True) -> dict[str, Any]:
    """All sections of one run; returns the model-card facts."""
    data_section(doc, facts)
    recipe_section(doc, facts)
    methods_note(doc, facts)
    card = results_sections(doc, facts)
    card["commands"] = facts.commands()
    return card


def common_sections(doc: Doc, card: dict[str, Any]) -> None:
    """Limitations, reproduction commands and the TRIPOD+AI checklist."""
    doc.section("limitations", "Limitations (automatic notes)")
    notes = card.get("limitations") or ["none detected automatically"]
    doc.bullets(notes)
    doc.para(
        "These notes are what the data show mechanically; the discussion of limitations, "
        "bias and generalisability (TRIPOD+AI 26) is the author's.",
        "note",
    )
    doc.section("reproduce", "Reproduce")
    doc.para("Run from the directory that holds the dataset (DATA) and the outputs:")
    doc.code("\n".join(card.get("commands", [])))
    doc.section("tripod", "TRIPOD+AI checklist")
    doc.para(
        "TRIPOD+AI (Collins et al., BMJ 2024;385:e078378): 27 items. 'report' = this report "
        "gives it (section named); 'partly' = the numbers are here, the author must describe "
        "or justify; 'author' = only the author can write it. Item texts are short paraphrases; "
        "use the published checklist for the wording.",
        "note",
    )
    rows = checklist(card.get("tripod_facts", {}))
    df = pd.DataFrame(rows)
    counts = df["status"].value_counts()
    doc.para(
        f"{counts.get('report', 0)} items covered, {counts.get('partly', 0)} partly, "
        f"{counts.get('author', 0)} for the author ({len(df)} items and sub-items)."
    )
    doc.table(df, classes={"status": lambda v: f"s-{v}"})


__all__ = ["SPLIT_ORDER", "Doc", "ReportResult", "build_report", "detect_kind", "png_of"]
