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
