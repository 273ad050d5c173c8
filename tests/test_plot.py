"""`edge-trl plot` on the histories of real (tiny) runs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge_trl import EdgeGRPOTrainer
from edge_trl.cli.main import app
from edge_trl.plotting import NotARunError, load_history
from edge_trl.testing import digit_share_reward, tiny_addition_dataset

from _helpers import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_path):
    runs = []
    for name, features in (("vanilla", {}), ("eda-klcov", {"eda": True, "cov_mode": "kl_cov", "num_iterations": 2})):
        out = tmp_path_factory.mktemp(name)
        args = tiny_config(out, max_steps=3, save_strategy="steps", save_steps=3, **features)
        trainer = EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args,
                                  train_dataset=tiny_addition_dataset(32))  # fmt: skip
        trainer.train()
        runs.append(out)
    return runs


def test_plot_two_runs(tmp_path, two_runs):
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", *map(str, two_runs), "--out", str(out), "--label", "GRPO", "--label", "EDA"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    for panel in ("reward", "entropy", "collapsed-group share", "advantage variance", "KL-Cov penalty"):
        assert panel in result.output
    assert len([e for e in load_history(two_runs[1]) if "edge/kl_cov_penalty" in e]) == 3  # from checkpoint-3


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path, two_runs):
    result = runner.invoke(app, ["plot", str(two_runs[0]), str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "is not a training run" in result.output
    with pytest.raises(NotARunError, match="no such folder"):
        load_history(tmp_path / "missing")
    mismatch = runner.invoke(app, ["plot", str(two_runs[0]), "--label", "a", "--label", "b"])
    assert mismatch.exit_code == 2 and "one per run" in mismatch.output
