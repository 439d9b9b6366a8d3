"""requirements.lock (what `make test` and `make demo` install) agrees with pyproject.toml's ranges."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = REPO_ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked_versions(text: str) -> dict[str, Version]:
    """{canonical name: version} of every ``name==version`` line of a pip-compile output."""
    pins = {}
    for line in text.splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def disagreements(pyproject: dict, pins: dict[str, Version], extras=("dev",)) -> list[str]:
    """One line per direct requirement (base plus ``extras``) that the lock lacks or pins outside its range."""
    project = pyproject["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    problems = []
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: in pyproject.toml, not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version}, pyproject.toml asks {req.specifier}")
    return problems


def test_lock_matches_pyproject():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    problems = disagreements(pyproject, locked_versions(LOCK.read_text()))
    assert not problems, "run `make lock`, then `make test`:\n" + "\n".join(problems)


def test_lock_pins_the_cpu_torch_and_pip():
    pins = locked_versions(LOCK.read_text())
    assert pins["torch"].local == "cpu"  # the CPU wheel on disk, never the CUDA one from the registry
    assert "pip" in pins  # the Makefile installs this pip first


def test_disagreements_are_found():
    pyproject = {"project": {"dependencies": ["numpy>=2", "torch>=2.2,<3", "absent>=1"],
                             "optional-dependencies": {"dev": ["pytest>=7"]}}}
    pins = locked_versions("numpy==1.26.4\ntorch==2.13.0+cpu\n    # via x\npytest==9.2.0\n")
    assert disagreements(pyproject, pins) == [
        "numpy: locked 1.26.4, pyproject.toml asks >=2",
        "absent: in pyproject.toml, not in requirements.lock",
    ]
