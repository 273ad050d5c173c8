"""benchmarks/miniature.py runs end to end on a very short schedule and writes its CSV, plot and claims."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "miniature.py"


@pytest.mark.slow
def test_miniature_short_run(tmp_path):
    spec = importlib.util.spec_from_file_location("miniature", SCRIPT)
    miniature = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(miniature)
    out = tmp_path / "mini"
    claims = miniature.main(["--methods", "eda", "gec", "kl-cov", "--seeds", "0", "--steps", "4", "--batch-size", "16",
                             "--eval-every", "2", "--eval-problems", "10", "--out", str(out)])  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert {r["method"] for r in rows} == {"grpo", "eda", "gec", "kl-cov"}  # the vanilla baseline is always run
    assert {r["step"] for r in rows} >= {"0", "1", "2", "3", "4"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    names = [claim for claim, _, _ in claims]
    assert "vanilla GRPO's entropy falls" in names
    assert "eda: EDA raises advantage variance" in names and "gec: GEC lowers the collapsed-group share" in names
    assert any(n.startswith("kl-cov keeps entropy higher") for n in names)
    assert json.loads((out / "summary.json").read_text())["methods"]["kl-cov"]["final_held_out_greedy"] is not None


def test_supervised_control_runs_for_the_given_time():
    import time

    from edge_trl.embedded import supervised_control

    start = time.perf_counter()
    result = supervised_control(seconds=2.0)
    assert 2.0 <= time.perf_counter() - start < 30
    assert result["steps"] > 0 and 0.0 <= result["greedy"] <= 1.0 and 0.0 <= result["sampled"] <= 1.0
