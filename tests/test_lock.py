"""The lock file (requirements.lock, made by pip-tools from pyproject.toml) agrees with pyproject:
every dependency of the package and of the extras the Makefile installs is pinned to one exact
version that the pyproject range admits, and the lock pins nothing loosely. `make lock` fixes a
disagreement."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
FIX = "run `make lock` and commit requirements.lock"


def makefile_extras() -> list[str]:
    m = re.search(r"^EXTRAS\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no EXTRAS := line"
    return m.group(1).split(",")


def pyproject_requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def read_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of a pip-compile output; refuses any line that is not `name==v`."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        if not m:
            raise AssertionError(f"requirements.lock: `{line}` is not an exact pin ({FIX})")
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def disagreements(reqs: list[Requirement], pins: dict[str, str]) -> list[str]:
    out = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req.name}=={pins[name]} is outside pyproject's `{req}`")
    return out


def test_lock_pins_every_pyproject_dependency_within_its_range():
    pins = read_lock(LOCK.read_text())
    bad = disagreements(pyproject_requirements(makefile_extras()), pins)
    assert not bad, f"requirements.lock disagrees with pyproject.toml: {bad} ({FIX})"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the local wheels


def test_lock_header_names_the_makefile_extras():
    header = LOCK.read_text().split("\n\n", 1)[0]
    m = re.search(r"--extra=(\S+)", header)
    assert m and set(m.group(1).split(",")) == set(makefile_extras()), FIX


@pytest.mark.parametrize(
    ("lock", "problem"),
    [
        ("torch==2.14.1\n", "is not in the lock"),  # a dependency missing from the lock
        ("pandas==1.5.3\n", "is outside"),  # a pin outside pyproject's range (pandas>=2.0)
    ],
)
def test_disagreement_is_found(lock, problem):
    reqs = [Requirement("torch==2.14.1"), Requirement("pandas>=2.0")]
    pins = read_lock(lock)
    assert any(problem in d for d in disagreements(reqs, pins))


def test_loose_lock_line_is_refused():
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_lock("numpy>=1.26\n")
