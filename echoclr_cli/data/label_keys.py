"""Label keys: which column of a label table joins its rows to the stored videos (and the DICOM
tag it is matched to), the normalised key values, and their shapes (what a value looks like,
never the value)."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.errors import UserError

# --------------------------------------------------------------------------- label keys
# Which id a label file is keyed by (``kind``: the hash kind of privacy.hash_id), and the DICOM
# tag its column is matched to. study and patient are the manifest's own study_id/patient_id.
KEY_TAGS = {
    "study": "StudyInstanceUID (0020,000D)",
    "accession": "AccessionNumber (0008,0050)",
    "patient": "PatientID (0010,0020)",
    "date_patient": "StudyDate (0008,0020) + PatientID (0010,0020)",
}
# Header spellings, compared without case, spaces, underscores and punctuation (_norm_name).
UID_NAMES = ("studyinstanceuid", "studyuid", "studyinstance")
STUDY_NAMES = ("studyid", "study")
ACCESSION_NAMES = ("accessionnumber", "accession", "acc", "accnum", "accno", "accnumber",
                   "accessionno", "accessionnum", "accessionnr")  # fmt: skip
PATIENT_NAMES = ("patientid", "patient", "mrn", "patientmrn", "medicalrecordnumber", "mrnumber")
DATE_NAMES = ("studydate", "examdate", "examinationdate", "studydatetime")
ID_NAMES = set(UID_NAMES + STUDY_NAMES + ACCESSION_NAMES + PATIENT_NAMES)
# Exact names of a study column (the layouts' alias tables look for one).
STUDY_KEYS = ("study_id", "StudyInstanceUID", "study", "acc_num", "Accession Number",
              "AccessionNumber", "accession")  # fmt: skip
KEY_COLUMN = "__key__"  # the normalised key value of each row (private, never written)


def _norm_name(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass
class LabelKey:
    """The column(s) a label file is keyed by and the hash kind they are matched as."""

    kind: str  # study | patient | accession | date_patient
    column: str
    date_column: str | None = None
    date_order: str = "dmy"  # day-first unless a value says month-first
    others: list[str] = field(default_factory=list)  # other id columns present, not used

    @property
    def tag(self) -> str:
        return KEY_TAGS[self.kind]

    def describe(self) -> str:
        if self.date_column:
            return f"columns '{self.date_column}' + '{self.column}'"
        return f"column '{self.column}'"


def find_label_key(lab: pd.DataFrame, label_key: str, path: Path) -> LabelKey:
    """The key of a label table. ``label_key``: ``auto`` takes the first present of a study UID
    column, an accession number, a study id, a study date together with a patient column, a
    patient id/MRN; ``study_id`` / ``study_uid`` / ``accession`` / ``patient_id`` /
    ``study_date`` require that key. Header spellings are matched without case, spaces,
    underscores and punctuation (``Accession Number``, ``ACC``, ``acc_num``; ``MRN``,
    ``Patient ID``; ``Study UID``, ``study_id``; ``Study Date``)."""
    norm = {c: _norm_name(c) for c in lab.columns}

    def cols(names) -> list[str]:
        return [c for c in lab.columns if norm[c] in names]

    dates = cols(DATE_NAMES) or (cols(("date",)) if label_key == "study_date" else [])
    found = {"uid": cols(UID_NAMES), "accession": cols(ACCESSION_NAMES),
             "study": cols(STUDY_NAMES), "patient": cols(PATIENT_NAMES)}  # fmt: skip
    order = {
        "auto": ["uid", "accession", "study", "date_patient", "patient"],
        "study_id": ["study", "uid"], "study_uid": ["uid", "study"], "patient_id": ["patient"],
        "accession": ["accession"], "study_date": ["date_patient"],
    }[label_key]  # fmt: skip
    for what in order:
        if what == "date_patient":
            if not (dates and found["patient"]):
                continue
            key = LabelKey("date_patient", found["patient"][0], dates[0])
            key.date_order = date_order(lab[dates[0]], dates[0], path)
        elif found[what]:
            key = LabelKey({"uid": "study"}.get(what, what), found[what][0])
        else:
            continue
        used = {key.column, key.date_column}
        key.others = [c for c in lab.columns if norm[c] in ID_NAMES and c not in used]
        return key
    want = "" if label_key == "auto" else f" for preprocess.label_key={label_key}"
    raise UserError(
        f"{path}: no id column to join labels on{want}; columns: {list(lab.columns)}",
        fix="name the key column like 'Accession Number', 'MRN' / 'PatientID', "
        "'StudyInstanceUID', or 'Study Date' next to a patient column (preprocess.label_key: "
        "auto | accession | patient_id | study_uid | study_id | study_date)",
    )


_DMY = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})(?:[ T].*)?")
_YMD = re.compile(r"(\d{4})(?:(\d{2})(\d{2})|([-/.])(\d{1,2})\4(\d{1,2})(?:[ T].*)?)")


def date_order(values: pd.Series, column: str, path: Path) -> str:
    """``dmy`` or ``mdy`` for the ``NN/NN/YYYY`` dates of a column: month-first only when a
    value's second number is above 12 (and no first one is); day-first by default."""
    firsts, seconds = [], []
    for v in values.astype("string").fillna(""):
        if m := _DMY.fullmatch(v.strip()):
            firsts.append(int(m[1]))
            seconds.append(int(m[3]))
    day_first, month_first = any(x > 12 for x in firsts), any(x > 12 for x in seconds)
    if day_first and month_first:
        raise UserError(f"{path}: column '{column}' holds dates in both DD/MM/YYYY and "
                        "MM/DD/YYYY order", fix="export the dates as YYYY-MM-DD")  # fmt: skip
    return "mdy" if month_first else "dmy"


def normalise_date(value, order: str = "dmy") -> str | None:
    """A date as ``YYYYMMDD`` (DICOM DA), from YYYYMMDD, YYYY-MM-DD, YYYY/MM/DD, DD/MM/YYYY
    (``order`` mdy: MM/DD/YYYY), DD.MM.YYYY, with or without a time; None when not a date."""
    s = str(value if value is not None else "").strip()
    if m := _YMD.fullmatch(s):
        y, mo, d = m[1], m[2] or m[5], m[3] or m[6]
    elif m := _DMY.fullmatch(s):
        y, (d, mo) = m[4], ((m[1], m[3]) if order == "dmy" else (m[3], m[1]))
    else:
        return None
    try:
        return dt.date(int(y), int(mo), int(d)).strftime("%Y%m%d")
    except ValueError:
        return None


def key_value(kind: str, value, date=None, order: str = "dmy") -> str:
    """The normalised text a key is hashed from ("" when unusable): whitespace stripped;
    accession numbers as upper-case text (``00123`` stays ``00123``, never a float); a study
    date + patient as ``PATIENT|YYYYMMDD``."""
    v = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    v = v.strip()
    if kind == "accession":
        return v.upper()
    if kind == "date_patient":
        d = normalise_date(date, order)
        return f"{v}|{d}" if v and d else ""
    return v


def video_key(kind: str, study: str | None, patient: str | None, header: dict | None,
              layout_study: str | None = None) -> str | None:  # fmt: skip
    """The key value a stored video is matched on (private), None when it has none: the
    manifest's study / patient id, the header's AccessionNumber (else the layout's own study
    id, e.g. the EchoCLR CSVs' acc_num), or its StudyDate + patient id."""
    header = header or {}
    if kind == "study":
        return study
    if kind == "patient":
        return patient
    if kind == "accession":
        return key_value(kind, header.get("accession") or layout_study) or None
    return key_value(kind, patient, header.get("study_date")) or None


def video_key_shape(kind: str, study: str | None, patient: str | None, header: dict | None,
                    layout_study: str | None = None) -> str:  # fmt: skip
    """The shape (:func:`value_shape`) of what a video is matched on; never the value."""
    header = header or {}
    if kind == "study":
        return value_shape(study)
    if kind == "patient":
        return value_shape(patient)
    if kind == "accession":
        return value_shape(header.get("accession") or layout_study)
    return f"{value_shape(header.get('study_date'), date=True)} + {value_shape(patient)}"


_RUNS = re.compile(r"[^\W\d_]+|\d+|\s+|[\W_]")  # letters (any script) | digits | spaces | one other
_SEPARATORS = set("-/._:#,")


def value_shape(value, date: bool = False, order: str = "dmy") -> str:
    """What a value looks like, never the value: ``10 digits``, ``A + 7 digits``,
    ``dotted UID, 40-64 chars``, ``YYYY-MM-DD``, ``missing`` / ``empty``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    s = str(value).strip()
    if not s:
        return "empty"
    if date and (form := _date_shape(s, order)):
        return form
    if re.fullmatch(r"\d+(\.\d+){2,}", s):
        n = len(s)
        band = "<20" if n < 20 else "20-39" if n < 40 else "40-64" if n <= 64 else ">64"
        return f"dotted UID, {band} chars"
    runs = _RUNS.findall(s)
    if len(runs) > 5:
        return f"text, {len(s)} chars"
    parts = []
    for r in runs:
        if r.isdigit():
            parts.append(f"{len(r)} digit{'s' if len(r) > 1 else ''}")
        elif r.isalpha():
            parts.append("A" if len(r) == 1 else f"{len(r)} letters")
        elif r.isspace():
            parts.append("space")
        else:
            parts.append(f"'{r}'" if r in _SEPARATORS else "symbol")
    return " + ".join(parts)


def _date_shape(s: str, order: str) -> str | None:
    time = " + time" if re.search(r"\d[ T]\d{1,2}:", s) else ""
    if re.fullmatch(r"\d{8}", s):
        return "YYYYMMDD"
    if m := _YMD.fullmatch(s):
        return f"YYYY{m[4]}MM{m[4]}DD{time}"
    if m := _DMY.fullmatch(s):
        sep = m[2]
        return (f"DD{sep}MM{sep}YYYY" if order == "dmy" else f"MM{sep}DD{sep}YYYY") + time
    return None


def shape_summary(shapes: Counter) -> str:
    """``10 digits (58), empty (2), 1 other shape`` (the three most common shapes)."""
    top = shapes.most_common(3)
    text = ", ".join(f"{s} ({n})" for s, n in top) or "nothing"
    rest = len(shapes) - len(top)
    return text + (f", {rest} other shape{'s' if rest > 1 else ''}" if rest else "")


def key_shapes(lab: pd.DataFrame, key: LabelKey) -> Counter:
    """Shapes of a label table's key values (the key column; with a date, date + patient)."""
    if key.date_column is None:
        return Counter(value_shape(v) for v in lab[key.column])
    return Counter(
        f"{value_shape(d, date=True, order=key.date_order)} + {value_shape(p)}"
        for d, p in zip(lab[key.date_column], lab[key.column], strict=True)
    )
