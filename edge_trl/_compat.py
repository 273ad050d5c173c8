"""The TRL versions edge-trl is tested against.

EdgeGRPOTrainer hooks TRL internals (``_generate_and_score_completions``, ``_get_per_token_logps_and_entropies``,
``_compute_loss``) and mirrors two small pieces of TRL logic, so it is pinned to the TRL minor series it was tested
on. Keep ``TESTED_TRL`` equal to the ``trl`` requirement in pyproject.toml (tests/test_compat.py checks both).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

from packaging.specifiers import SpecifierSet

TESTED_TRL = SpecifierSet(">=1.16.0,<1.17")


def check_trl_version() -> str:
    """Warn loudly when the installed TRL is outside the tested range; return the installed version."""
    installed = version("trl")
    if installed not in TESTED_TRL:
        warnings.warn(
            f"edge-trl is tested with trl{TESTED_TRL} but trl=={installed} is installed. EdgeGRPOTrainer hooks TRL "
            f"internals and may silently compute something else: run `pip install 'trl{TESTED_TRL}'`.",
            RuntimeWarning,
            stacklevel=2,
        )
    return installed
