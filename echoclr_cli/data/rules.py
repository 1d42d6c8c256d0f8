"""Label rules over measurement columns: ``NAME = EXPRESSION``, parsed by a small hand-written
grammar (never ``eval``), evaluated with three-valued logic (true / false / unknown).

Grammar (keywords case-insensitive)::

    rule       := LABEL '=' expr
    expr       := and_expr ('or' and_expr)*
    and_expr   := not_expr ('and' not_expr)*
    not_expr   := 'not' not_expr | '(' expr ')' | comparison
    comparison := operand OP operand          OP: >= > <= < == !=
    operand    := IDENT | `any column name` | NUMBER | 'text' | "text"

A comparison with a number is numeric (an empty cell is unknown, a cell that is not a number is
unknown and reported: ``None``, ``NA`` and ``null`` are text, not numbers); a comparison with a
quoted text is an equality (== / != only) that ignores case, runs of spaces and the separator
between two grades (``'Mild to Moderate' == 'mild-moderate'``: :func:`grade_text`); a
not-available marker (:data:`NA_TOKENS`) in a text comparison is unknown and reported, never
the opposite class. ``or`` is true when any side is true and false only when all sides are known false;
``and`` is false when any side is false and true only when all are known true; ``not`` keeps
unknown. So a missing measurement never makes a negative label unless the rule is decided
without it. Presets (``echoclr_cli.data.presets``) expand guideline definitions into such rules
with the user's column names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from echoclr_cli.errors import UserError

MAX_RULE_CHARS = 1000
MAX_DEPTH = 20
OPS = (">=", "<=", "==", "!=", ">", "<")
KEYWORDS = {"and", "or", "not"}
# Only an empty cell is missing: "None" (no disease), "NA", "null" are text values (FAULTS 46).
MISSING = frozenset({""})
# Text that says "not available": never a class in a text comparison; unknown and reported.
NA_TOKENS = frozenset({"na", "n/a", "#n/a", "null", "nan", "unknown", "not available"})
# Aortic stenosis grades (case-, space- and separator-insensitive, :func:`grade_text`): the `as`
# preset's ``grade`` column and the EchoCLR layout's ``av_stenosis``. "moderate-severe" is in
# neither list on purpose: it is not "severe" by the guideline, so it is counted as a bad value
# unless the user maps it (preset parameter ``severe=`` or ``not_severe=``).
AS_SEVERE = ("severe", "critical", "very severe")
AS_NOT_SEVERE = ("none", "no", "normal", "absent", "trace", "trivial", "mild", "mild-moderate",
                 "moderate", "non-severe", "non severe", "nonsevere")  # fmt: skip
_LABEL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
RULE_FIX = (
    "write e.g. --label-rule 'as=av_vmax >= 4 or av_mean_gradient >= 40' "
    "(columns, numbers, 'text', >= > <= < == !=, and, or, not, parentheses; "
    "`quote odd column names` in backquotes)"
)


def grade_text(value) -> str:
    """Text as compared by rules and grade maps: lower case, ``_`` as a space, runs of spaces as
    one, ``-`` / ``/`` / ``to`` between words as ``-`` (``'Mild to Moderate'`` ->
    ``'mild-moderate'``)."""
    s = " ".join(str(value).replace("_", " ").lower().split())
    return re.sub(r"\s*(?:-|/|\bto\b)\s*", "-", s)


def _show(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def rule_error(rule: str, what: str, pos: int | None = None) -> UserError:
    """A malformed rule: one line naming the rule and the position (1-based, in the rule)."""
    at = f" at position {pos + 1}" if pos is not None else ""
    return UserError(f"label rule '{_show(rule)}': {what}{at}", fix=RULE_FIX)


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Tok:
    kind: str  # ident | number | string | op | lpar | rpar | and | or | not | end
    text: str
    pos: int
    value: float | str | None = None


def tokenize(text: str, offset: int = 0, rule: str | None = None) -> list[Tok]:
    """Tokens of an expression; ``offset``: where it starts in ``rule`` (for positions)."""
    rule = text if rule is None else rule
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        p = offset + i
        if c.isspace():
            i += 1
        elif c == "(":
            out.append(Tok("lpar", c, p))
            i += 1
        elif c == ")":
            out.append(Tok("rpar", c, p))
            i += 1
        elif text.startswith(OPS, i):
            op = next(o for o in OPS if text.startswith(o, i))
            out.append(Tok("op", op, p))
            i += len(op)
        elif c in "'\"`":
            j = text.find(c, i + 1)
            if j < 0:
                raise rule_error(rule, f"unterminated {c}quote{c}", p)
            body = text[i + 1 : j]
            if c == "`":
                if not body.strip():
                    raise rule_error(rule, "empty `column name`", p)
                out.append(Tok("ident", body, p, body))
            else:
                out.append(Tok("string", body, p, body))
            i = j + 1
        elif (m := _NUMBER.match(text, i)) and (c != "-" or _operand_expected(out)):
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] == "_"):
                raise rule_error(rule, f"malformed number '{text[i : end + 1]}'", p)
            out.append(Tok("number", m.group(), p, float(m.group())))
            i = end
        elif m := _IDENT.match(text, i):
            word = m.group()
            kind = word.lower() if word.lower() in KEYWORDS else "ident"
            out.append(Tok(kind, word, p, word))
            i = m.end()
        elif c == "=":
            raise rule_error(rule, "'=' is not an operator (use == to compare)", p)
        else:
            raise rule_error(rule, f"unexpected character {c!r}", p)
    out.append(Tok("end", "", offset + n))
    return out


def _operand_expected(toks: list[Tok]) -> bool:
    return not toks or toks[-1].kind in ("op", "lpar", "and", "or", "not")


# --------------------------------------------------------------------------- syntax tree
@dataclass(frozen=True)
class Cmp:
    left: Tok
    op: str
    right: Tok

    def text(self) -> str:
        return f"{_operand_text(self.left)} {self.op} {_operand_text(self.right)}"

    def columns(self) -> list[str]:
        return [t.value for t in (self.left, self.right) if t.kind == "ident"]


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    items: tuple

    def text(self) -> str:
        return f" {self.op} ".join(
            f"({x.text()})" if isinstance(x, BoolOp) else x.text() for x in self.items
        )

    def columns(self) -> list[str]:
        return [c for x in self.items for c in x.columns()]


@dataclass(frozen=True)
class Not:
    item: object

    def text(self) -> str:
        inner = self.item.text()
        return f"not ({inner})" if isinstance(self.item, BoolOp) else f"not {inner}"

    def columns(self) -> list[str]:
        return self.item.columns()


def _operand_text(t: Tok) -> str:
    if t.kind == "ident":
        return (
            t.value
            if _IDENT.fullmatch(t.value) and t.value.lower() not in KEYWORDS
            else (f"`{t.value}`")
        )
    if t.kind == "string":
        return f"'{t.value}'"
    return t.text


class _Parser:
    def __init__(self, toks: list[Tok], rule: str):
        self.toks, self.i, self.rule, self.depth = toks, 0, rule, 0

    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def fail(self, what: str, tok: Tok | None = None):
        tok = tok or self.tok
        got = "the end of the rule" if tok.kind == "end" else f"'{_show(tok.text)}'"
        raise rule_error(self.rule, f"{what}, got {got}", tok.pos)

    def parse(self):
        node = self.expr()
        if self.tok.kind != "end":
            self.fail("expected 'and', 'or' or the end of the rule")
        return node

    def _chain(self, op: str, operand: Callable[[], Any]):
        """``operand (op operand)*``: one operand, or a ``BoolOp`` of all of them."""
        items = [operand()]
        while self.tok.kind == op:
            self.i += 1
            items.append(operand())
        return items[0] if len(items) == 1 else BoolOp(op, tuple(items))

    def expr(self):
        return self._chain("or", self.and_expr)

    def and_expr(self):
        return self._chain("and", self.not_expr)

    def not_expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise rule_error(self.rule, f"nested deeper than {MAX_DEPTH} levels", self.tok.pos)
        try:
            if self.tok.kind == "not":
                self.i += 1
                return Not(self.not_expr())
            if self.tok.kind == "lpar":
                self.i += 1
                node = self.expr()
                if self.tok.kind != "rpar":
                    self.fail("expected ')'")
                self.i += 1
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self):
        left = self.operand()
        if self.tok.kind != "op":
            self.fail(f"expected a comparison (>= > <= < == !=) after '{_show(left.text)}'")
        op = self.tok.text
        self.i += 1
        right = self.operand()
        if "ident" not in (left.kind, right.kind):
            raise rule_error(self.rule, "a comparison needs a column on one side", left.pos)
        if "string" in (left.kind, right.kind):
            if op not in ("==", "!="):
                raise rule_error(self.rule, f"text can only be compared with == or !=, not {op}",
                                left.pos)  # fmt: skip
            if "number" in (left.kind, right.kind):
                raise rule_error(self.rule, "compares a number with a text", left.pos)
        return Cmp(left, op, right)

    def operand(self) -> Tok:
        tok = self.tok
        if tok.kind not in ("ident", "number", "string"):
            self.fail("expected a column, a number or a 'text'")
        self.i += 1
        return tok


# --------------------------------------------------------------------------- rules
@dataclass
class Rule:
    """``label = expr``; ``guard``: column -> accepted values (compared as :func:`grade_text`); a
    row whose value is another non-empty one gets an unknown label and is reported (presets:
    sex must be one of the two given values, an AS grade one of the known grades)."""

    label: str
    expr: object
    source: str  # the text as given (or the preset)
    guard: dict[str, set[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        cols = self.expr.columns() + list(self.guard)
        return list(dict.fromkeys(cols))

    @property
    def clauses(self) -> list:
        e = self.expr
        return list(e.items) if isinstance(e, BoolOp) and e.op == "or" else [e]

    def text(self) -> str:
        return f"{self.label} = {self.expr.text()}"


def parse_rule(text: str) -> Rule:
    """``NAME = EXPRESSION`` -> :class:`Rule` (UserError naming the rule and the position)."""
    if not isinstance(text, str):
        raise rule_error(str(text), "a rule is a text 'NAME = EXPRESSION'")
    if len(text) > MAX_RULE_CHARS:
        raise rule_error(text, f"longer than {MAX_RULE_CHARS} characters ({len(text)})")
    m = _LABEL.match(text)
    if not m:
        raise rule_error(text, "expected 'LABEL = EXPRESSION' (a label name, then '=')", 0)
    body = text[m.end() :]
    if not body.strip():
        raise rule_error(text, "empty expression after '='", m.end())
    toks = tokenize(body, m.end(), text)
    return Rule(m.group(1), _Parser(toks, text).parse(), text)


# --------------------------------------------------------------------------- evaluation
@dataclass
class Truth:
    """Three-valued vector: ``true`` / ``false`` masks (neither = unknown)."""

    true: np.ndarray
    false: np.ndarray

    @property
    def unknown(self) -> np.ndarray:
        return ~(self.true | self.false)


def _missing(s: pd.Series) -> np.ndarray:
    t = s.astype("string").str.strip().str.lower()
    return (t.isna() | t.isin(MISSING)).to_numpy(dtype=bool)


def is_na_token(s: pd.Series) -> np.ndarray:
    """Cells that say "not available" (:data:`NA_TOKENS`, any case)."""
    t = s.astype("string").str.strip().str.lower()
    return t.isin(NA_TOKENS).fillna(False).to_numpy(dtype=bool)


class _Eval:
    """``bad``: column -> rows whose value was read but gives no answer (not a number in a
    numeric comparison, a not-available marker in a text one); reported as bad values."""

    def __init__(self, df: pd.DataFrame):
        self.df, self.num, self.bad = df, {}, {}

    def numeric(self, col: str) -> np.ndarray:
        if col not in self.num:
            s = self.df[col]
            v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
            self.num[col] = v
            self.bad[col] = ~_missing(s) & np.isnan(v)
        return self.num[col]

    def operand(self, t: Tok, numeric: bool):
        if t.kind == "ident":
            if numeric:
                return self.numeric(t.value)
            raw = self.df[t.value]
            na = is_na_token(raw)
            prev = self.bad.get(t.value, np.zeros(len(raw), dtype=bool))
            self.bad[t.value] = prev | na
            text = raw.astype("string").map(grade_text, na_action="ignore")
            unknown = pd.Series(_missing(raw) | na, index=raw.index)
            return text.where(~unknown).to_numpy(dtype=object, na_value=None)
        if t.kind == "number":
            return np.full(len(self.df), float(t.value))
        return np.full(len(self.df), grade_text(t.value), dtype=object)

    def __call__(self, node) -> Truth:
        if isinstance(node, Not):
            inner = self(node.item)
            return Truth(inner.false, inner.true)
        if isinstance(node, BoolOp):
            parts = [self(x) for x in node.items]
            anyt = np.logical_or.reduce([p.true for p in parts])
            anyf = np.logical_or.reduce([p.false for p in parts])
            allt = np.logical_and.reduce([p.true for p in parts])
            allf = np.logical_and.reduce([p.false for p in parts])
            return Truth(anyt, allf) if node.op == "or" else Truth(allt, anyf)
        numeric = "string" not in (node.left.kind, node.right.kind)
        a, b = self.operand(node.left, numeric), self.operand(node.right, numeric)
        if numeric:
            known = ~np.isnan(a) & ~np.isnan(b)
            with np.errstate(invalid="ignore"):
                hit = {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b, "==": a == b,
                       "!=": a != b}[node.op]  # fmt: skip
        else:
            known = np.array([x is not None and y is not None for x, y in zip(a, b, strict=True)],
                             dtype=bool)  # fmt: skip
            eq = np.array([x == y for x, y in zip(a, b, strict=True)], dtype=bool)
            hit = eq if node.op == "==" else ~eq
        return Truth(known & hit, known & ~hit)


def check_columns(rules: list[Rule], columns, source: str) -> None:
    """One line for the first rule naming a column the table does not have."""
    cols = list(columns)
    for r in rules:
        missing = [c for c in r.columns if c not in cols]
        if missing:
            near = [c for c in cols if c.lower() in {m.lower() for m in missing}]
            hint = f" (did you mean {near}?)" if near else ""
            raise UserError(
                f"{source}: label rule '{_show(r.source)}' names column(s) {missing}, not in "
                f"the table{hint}; columns: {_show(', '.join(cols))}",
                fix="use the table's column names (`quote` names with spaces)",
            )


@dataclass
class RuleResult:
    values: pd.Series  # 0/1/NaN
    bad: pd.Series  # a named column's value gives no answer: not a number, not available,
    # outside a guard's values (row-wise; reported)
    bad_columns: dict  # row index -> first bad column
    report: dict


def evaluate(rule: Rule, df: pd.DataFrame) -> RuleResult:
    """Labels of one rule over a table (columns checked before: :func:`check_columns`)."""
    ev = _Eval(df)
    t = ev(rule.expr)
    # A guarded column's value outside the accepted ones makes the label unknown and is a bad
    # value; an empty or not-available one is left to the three-valued logic.
    unknown_guard = np.zeros(len(df), dtype=bool)
    guard_bad: dict[str, np.ndarray] = {}
    for col, allowed in rule.guard.items():
        s = df[col].astype("string").map(grade_text, na_action="ignore")
        out = (~s.isin({grade_text(a) for a in allowed})).fillna(False).to_numpy(dtype=bool)
        out = out & ~_missing(df[col]) & ~is_na_token(df[col])
        guard_bad[col] = out
        unknown_guard |= out
    true, false = t.true & ~unknown_guard, t.false & ~unknown_guard
    values = pd.Series(np.where(true, 1.0, np.where(false, 0.0, np.nan)), index=df.index)
    bad = np.zeros(len(df), dtype=bool)
    first_bad: dict = {}
    for col, b in [*ev.bad.items(), *guard_bad.items()]:
        for i in np.flatnonzero(b & ~bad):
            first_bad[df.index[i]] = col
        bad |= b
    clauses = []
    for c in rule.clauses:
        ct = _Eval(df)(c)
        clauses.append({"clause": c.text(), "fired": int((ct.true & true).sum())})
    missing = {col: int(_missing(df[col]).sum()) for col in rule.columns if col in df.columns}
    report = {
        "label": rule.label, "rule": rule.text(), "source": rule.source,
        "rows": len(df), "positive": int(true.sum()), "negative": int(false.sum()),
        "unknown": int((~true & ~false).sum()), "clauses": clauses,
        "missing_values": missing,
        "not_numeric": {c: int(b.sum()) for c, b in ev.bad.items() if c in ev.num},
    }  # fmt: skip
    text_na = {c: int(b.sum()) for c, b in ev.bad.items() if c not in ev.num and b.any()}
    if text_na:
        report["not_available"] = text_na
    if rule.guard:
        report["guard_unknown"] = int((unknown_guard & (t.true | t.false)).sum())
    return RuleResult(values, pd.Series(bad, index=df.index), first_bad, report)
