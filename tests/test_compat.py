"""The supported TRL range is pinned in one place and checked loudly."""

from __future__ import annotations

import tomllib
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edge_trl import _compat

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _trl_requirement() -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "trl")


def test_pyproject_pin_matches_the_tested_range():
    assert _trl_requirement().specifier == _compat.TESTED_TRL


def test_installed_trl_is_a_tested_version():
    installed = version("trl")
    assert installed in _compat.TESTED_TRL, (
        f"trl=={installed} is installed but edge-trl is only tested with trl{_compat.TESTED_TRL}. EdgeGRPOTrainer "
        "hooks TRL internals: re-run the whole suite on this version, then widen the pin in pyproject.toml and "
        "edge_trl/_compat.py together."
    )


def test_untested_trl_warns_loudly(monkeypatch):
    monkeypatch.setattr(_compat, "version", lambda _: "1.17.0")
    with pytest.warns(RuntimeWarning, match=r"trl==1\.17\.0 is installed"):
        _compat.check_trl_version()
    monkeypatch.setattr(_compat, "version", lambda _: "1.16.3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _compat.check_trl_version() == "1.16.3"


LOCKS = {
    "main": PYPROJECT.parent / ".ci" / "constraints.txt",
    "vllm": PYPROJECT.parent / ".ci" / "constraints-vllm.txt",
}


def _pins(lock: Path) -> dict[str, str]:
    lines = [line.strip() for line in lock.read_text().splitlines()]
    pins = [Requirement(line) for line in lines if line and not line.startswith("#")]
    for pin in pins:
        (spec,) = pin.specifier  # one exact version per package: a lock, not a range
        assert spec.operator == "==", f"{lock.name}: {pin} is not an exact pin"
    return {pin.name.lower().replace("_", "-"): next(iter(pin.specifier)).version for pin in pins}


@pytest.mark.parametrize("env", LOCKS)
def test_ci_lock_pins_every_dependency_within_the_supported_ranges(env):
    """CI installs from these locks (.ci/run, .ci/vllm.sh): each must pin every dependency pyproject.toml declares,
    at a version its range allows. A widened or narrowed range without a re-lock (EDGE_TRL_RELOCK=1) fails here."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = {"main": ["dev", "docs", "deepspeed"], "vllm": ["dev", "docs"]}[env]
    requirements = [Requirement(d) for d in project["dependencies"]]
    requirements += [Requirement(d) for extra in extras for d in project["optional-dependencies"][extra]]
    pins = _pins(LOCKS[env])
    for requirement in requirements:
        if requirement.name == "edge-trl":  # the self-reference of the dev extra
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f".ci/{LOCKS[env].name} does not pin {name}: re-lock with EDGE_TRL_RELOCK=1 bash .ci/run"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f".ci/{LOCKS[env].name} pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_ci_installs_from_the_locks():
    ci = (PYPROJECT.parent / ".ci" / "run").read_text()
    vllm = (PYPROJECT.parent / ".ci" / "vllm.sh").read_text()
    assert "-c .ci/constraints.txt" in ci and ci.count('"${lock[@]}"') == 3  # pip, edge-trl with extras, deepspeed
    assert "LOCK=.ci/constraints-vllm.txt" in vllm and vllm.count('"${lock[@]}"') == 2
