"""The lock files under requirements/ agree with pyproject.toml: same direct dependencies, versions in range.

Each lock is compiled by `make lock` from pyproject.toml with some extras (its header names them). A
dependency added to pyproject.toml and not re-locked, or removed and still locked, or a range the pinned
version no longer satisfies, fails here, before an install on a fresh machine finds out.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from support.paths import REPO_ROOT

ROOT = REPO_ROOT
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = sorted((ROOT / "requirements").glob("*.txt"))
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
DIRECT = "embedq (pyproject.toml)"
# The installs the docs promise, each from its own lock.
EXPECTED_LOCKS = {"dev.txt", "image-cpu.txt", "image-gpu.txt"}


def requirements_of(extras: list[str]) -> dict[str, Requirement]:
    """Return pyproject's direct requirements for the base install plus ``extras``, self-references expanded."""
    found = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == "embedq":
                pending.extend(requirement.extras)
            else:
                found[canonicalize_name(requirement.name)] = requirement
    return found


def parse_lock(path: Path) -> tuple[list[str], dict[str, Version], set[str]]:
    """Return (extras it was compiled with, every pin, the packages it says pyproject asked for directly)."""
    text = path.read_text()
    extras = re.findall(r"--extra=([\w-]+)", text.split("\n\n", 1)[0])
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current = None
    for line in text.splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = Version(match.group(2))
        elif current and line.strip().lstrip("#").strip().removeprefix("via ") == DIRECT:
            direct.add(current)
    return extras, pins, direct


def test_every_documented_install_has_a_lock() -> None:
    assert {path.name for path in LOCKS} == EXPECTED_LOCKS


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.name)
def test_lock_pins_exactly_what_pyproject_asks_for(lock: Path) -> None:
    extras, pins, direct = parse_lock(lock)
    assert extras, f"{lock.name}: no --extra in its header: re-create it with `make lock`"
    wanted = requirements_of(extras)
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{lock.name} lacks {missing}, which pyproject.toml asks for: run `make lock`"
    stale = sorted(direct - set(wanted))
    assert not stale, f"{lock.name} still pins {stale} as direct dependencies pyproject.toml dropped: `make lock`"
    unmarked = sorted(set(wanted) - direct)
    assert not unmarked, f"{lock.name} does not list {unmarked} as pyproject's own: run `make lock`"
    out_of_range = {
        name: str(pins[name])
        for name, requirement in wanted.items()
        if not requirement.specifier.contains(pins[name], prereleases=True)
    }
    assert not out_of_range, f"{lock.name} pins versions pyproject.toml's ranges exclude: {out_of_range}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.name)
def test_every_pin_carries_a_hash(lock: Path) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n\n", 1)[1])
    unhashed = [entry.split()[0] for entry in entries if PIN.match(entry) and "--hash=sha256:" not in entry]
    assert not unhashed, f"{lock.name}: pins without a hash: {unhashed}"


def test_the_parser_sees_a_dependency_pyproject_dropped(tmp_path: Path) -> None:
    lock = LOCKS[0].read_text()
    stray = "stray-package==1.0 \\\n    --hash=sha256:" + "0" * 64 + f"\n    # via {DIRECT}\n"
    (tmp_path / "lock.txt").write_text(lock + stray)
    _, pins, direct = parse_lock(tmp_path / "lock.txt")
    assert "stray-package" in pins and "stray-package" in direct


def test_the_installed_transformers_accepts_the_installed_peft() -> None:
    """transformers refuses peft below its MIN_PEFT_VERSION at LoRA load: pyproject's ranges must exclude that."""
    from importlib.metadata import version

    from transformers.integrations.peft import MIN_PEFT_VERSION

    assert Version(version("peft")) >= Version(MIN_PEFT_VERSION), (
        f"transformers {version('transformers')} needs peft >= {MIN_PEFT_VERSION}, the lock has {version('peft')}: "
        "cap transformers in pyproject.toml below that release (or raise peft), then `make lock`"
    )
