"""De-identified DICOM fields for subgroup analysis (vendor, model, year, sex, age band, frame rate).

``deidentified_fields(ds)`` reads a pydicom dataset (header only is enough) and returns coarse
values that are safe to keep in a public manifest: no UID, no name, no date finer than the year,
the age only as a 10-year band (90 and over pooled, as HIPAA Safe Harbor requires), free-text
vendor and model reduced to a canonical name from an allow-list (:data:`VENDORS`,
:data:`MODEL_FAMILIES`), anything else ``other``: header text never reaches a public file.
Missing or malformed tags give None.
"""

from __future__ import annotations

import math
import re
from typing import Any

FIELDS = ("manufacturer", "model", "study_year", "sex", "age_band", "frame_rate_band")
AGE_BAND_WIDTH = 10
AGE_TOP = 90  # ages >= 90 are pooled into one band
_FPS_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 80, "50-79"), (80, math.inf, ">=80"))
_SEX = {"M": "M", "F": "F", "O": "O"}
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
OTHER = "other"  # a vendor or model text that matches no known name

# Public vendor and model text is an allow-list: canonical name -> the spellings it is known by
# (lower case, words; a value matches when its first words are one of them, a family name may
# run into its model number: "Vivid7", "EPIQ7C"). The output is always one of the canonical
# names or OTHER, so no hospital, operator or patient text in a header goes public.
VENDORS: dict[str, tuple[str, ...]] = {
    "GE Healthcare": ("ge", "ge healthcare", "ge vingmed", "ge medical", "general electric",
                      "gehc"),
    "Philips": ("philips", "atl"),
    "Siemens Healthineers": ("siemens", "acuson"),
    "Canon Medical": ("canon", "toshiba"),
    "Samsung Medison": ("samsung", "medison"),
    "Mindray": ("mindray",),
    "Esaote": ("esaote",),
    "SonoSite": ("sonosite", "fujifilm sonosite"),
    "Fujifilm": ("fujifilm", "hitachi", "aloka"),
    "Butterfly Network": ("butterfly",),
    "EchoSynth": ("echosynth",),  # `echoclr synth`: the internal site's vendor
    "SonoView": ("sonoview",),  # `echoclr synth`: the external site's vendor
}  # fmt: skip
MODEL_FAMILIES: dict[str, tuple[str, ...]] = {
    "Vivid": ("vivid",), "LOGIQ": ("logiq",), "Voluson": ("voluson",),
    "EPIQ": ("epiq",), "iE33": ("ie33",), "Affiniti": ("affiniti",), "CX50": ("cx50",),
    "HD11": ("hd11",), "HD15": ("hd15",), "Sonos": ("sonos",), "Lumify": ("lumify",),
    "Acuson SC2000": ("acuson sc2000", "sc2000"), "Acuson Sequoia": ("acuson sequoia", "sequoia"),
    "Acuson": ("acuson",),
    "Aplio": ("aplio",), "Artida": ("artida",), "Xario": ("xario",),
    "HERA": ("hera",), "RS85": ("rs85",), "Resona": ("resona", "mindray resona"),
    "MyLab": ("mylab",), "Arietta": ("arietta",), "Lisendo": ("lisendo",),
    "SonoSite Edge": ("sonosite edge", "edge"),
    "SonoSite X-Porte": ("sonosite x porte", "x porte", "xporte"),
    "Butterfly iQ": ("butterfly iq", "iq"),
}  # fmt: skip


def _words(value: Any) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", str(value).lower()).split()


def _allowed(value: Any, names: dict[str, tuple[str, ...]]) -> str | None:
    """The canonical name ``value`` starts with (``names``), ``OTHER``, or None when empty."""
    if value is None:
        return None
    words = _words(value)
    if not words:
        return None
    best: tuple[int, str] | None = None
    for canon, spellings in names.items():
        for sp in spellings:
            w = sp.split()
            n = len(w)
            head, last = words[: n - 1], words[n - 1] if len(words) >= n else ""
            run_on = last.startswith(w[-1]) and last[len(w[-1]) :][:1].isdigit()
            if head == w[:-1] and (last == w[-1] or run_on) and (best is None or n > best[0]):
                best = (n, canon)
    return best[1] if best else OTHER


def public_vendor(value: Any) -> str | None:
    """Manufacturer text -> a canonical vendor name (:data:`VENDORS`), ``other``, or None."""
    return _allowed(value, VENDORS)


def public_model(value: Any) -> str | None:
    """ManufacturerModelName -> a canonical model family (:data:`MODEL_FAMILIES`), ``other``,
    or None."""
    return _allowed(value, MODEL_FAMILIES)


def public_vendor_columns(df):
    """``df`` with its ``manufacturer`` / ``model`` columns reduced to the allow-list (a
    manifest written before the allow-list, or by hand). Canonical names map to themselves."""
    cols = {"manufacturer": public_vendor, "model": public_model}
    if not set(cols) & set(df.columns):
        return df
    out = df.copy()
    for col, fn in cols.items():
        if col in df.columns:
            out[col] = [fn(v) if isinstance(v, str) and v.strip() else v for v in df[col]]
    return out


def _year(value: Any) -> int | None:
    s = str(value or "").strip()
    if len(s) >= 4 and s[:4].isdigit():
        y = int(s[:4])
        return y if 1900 <= y <= 2100 else None
    return None


def age_years(patient_age: Any) -> float | None:
    """DICOM AS value (``"065Y"``, ``"018M"``, ``"003W"``, ``"010D"``) -> years, or None."""
    s = str(patient_age or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", s)
    if not m:
        return None
    return int(m.group(1)) * _AGE_UNITS[m.group(2) or "Y"]


def _age_from_dates(birth: Any, study: Any) -> float | None:
    """Whole years between two DA values (YYYYMMDD); the dates themselves are never returned."""
    b, s = str(birth or "").strip(), str(study or "").strip()
    if not (len(b) >= 8 and len(s) >= 8 and b[:8].isdigit() and s[:8].isdigit()):
        return None
    by, bm, bd = int(b[:4]), int(b[4:6]), int(b[6:8])
    sy, sm, sd = int(s[:4]), int(s[4:6]), int(s[6:8])
    years = sy - by - ((sm, sd) < (bm, bd))
    return float(years) if 0 <= years < 130 else None


def age_band(years: float | None) -> str | None:
    """Years -> ``"0-9"``, ``"10-19"``, ..., ``"80-89"``, ``">=90"``; None when unknown."""
    if years is None or not math.isfinite(years) or years < 0 or years >= 130:
        return None
    if years >= AGE_TOP:
        return f">={AGE_TOP}"
    low = int(years // AGE_BAND_WIDTH) * AGE_BAND_WIDTH
    return f"{low}-{low + AGE_BAND_WIDTH - 1}"


def _num(value: Any) -> float | None:
    try:
        v = float(value[0] if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def frame_rate(ds: Any) -> float | None:
    """Frames per second from CineRate, RecommendedDisplayFrameRate or FrameTime (ms)."""
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        v = _num(ds.get(tag))
        if v is not None:
            return v
    ft = _num(ds.get("FrameTime"))
    return 1000.0 / ft if ft is not None else None


def frame_rate_band(fps: float | None) -> str | None:
    """``"<30" | "30-49" | "50-79" | ">=80"`` (None when unknown)."""
    if fps is None or not math.isfinite(fps) or fps <= 0:
        return None
    return next(name for low, high, name in _FPS_BANDS if low <= fps < high)


def deidentified_fields(ds: Any) -> dict[str, Any]:
    """Coarse, de-identified subgroup fields of one DICOM dataset (``FIELDS`` keys).

    - ``manufacturer`` (Manufacturer), ``model`` (ManufacturerModelName): a canonical vendor
      name / model family from the allow-list, ``other`` for any other text.
    - ``study_year``: year of StudyDate (else SeriesDate, AcquisitionDate, ContentDate).
    - ``sex``: ``M | F | O`` (PatientSex).
    - ``age_band``: 10-year band from PatientAge, else from PatientBirthDate and the study date;
      ``>=90`` pooled.
    - ``frame_rate_band``: from CineRate / RecommendedDisplayFrameRate / FrameTime.
    """
    date = next(
        (ds.get(t) for t in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
         if ds.get(t)),
        None,
    )  # fmt: skip
    years = age_years(ds.get("PatientAge"))
    if years is None:
        years = _age_from_dates(ds.get("PatientBirthDate"), date)
    sex = str(ds.get("PatientSex") or "").strip().upper()
    return {
        "manufacturer": public_vendor(ds.get("Manufacturer")),
        "model": public_model(ds.get("ManufacturerModelName")),
        "study_year": _year(date),
        "sex": _SEX.get(sex),
        "age_band": age_band(years),
        "frame_rate_band": frame_rate_band(frame_rate(ds)),
    }
