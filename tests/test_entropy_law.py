"""The entropy-performance law: the fit, its no-fits, the points of a history, the prefix forecast, the config checks,
`edge-trl law` and its plot panel."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_trl import EdgeGRPOConfig
from edge_trl.cli.main import app
from edge_trl.entropy_law import (
    fit_entropy_law,
    judge,
    law_logs,
    law_points,
    metric_key,
    prefix_forecast,
)

from _helpers import SCRIPTS, launch_two_ranks

REPO = Path(__file__).resolve().parents[1]
COMMITTED_RUN = REPO / "benchmarks" / "results" / "evidence2" / "entropy" / "runs" / "grpo-0.json"
runner = CliRunner()


def synthetic(a: float, b: float, n: int, noise: float, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    hs = [0.6 - 0.5 * i / (n - 1) for i in range(n)]  # entropy falling over a run
    return hs, [b - a * math.exp(h) + rng.gauss(0, noise) for h in hs]


def test_fit_recovers_a_and_b_from_noisy_points():
    hs, rs = synthetic(a=0.8, b=1.5, n=200, noise=0.01)
    fit = fit_entropy_law(hs, rs)
    assert fit.ok and fit.n == 200
    assert fit.a == pytest.approx(0.8, abs=0.03) and fit.b == pytest.approx(1.5, abs=0.04)
    assert fit.ceiling == pytest.approx(fit.b - fit.a) and fit.ceiling == pytest.approx(0.7, abs=0.02)
    assert fit.r2 > 0.98 and fit.rmse == pytest.approx(0.01, rel=0.2)
    exact = fit_entropy_law(*synthetic(a=0.8, b=1.5, n=10, noise=0.0))
    assert exact.a == pytest.approx(0.8) and exact.b == pytest.approx(1.5) and exact.r2 == pytest.approx(1.0)
    assert exact.predict([0.0]) == [pytest.approx(0.7)]


@pytest.mark.parametrize(
    ("hs", "rs", "reason"),
    [
        ([0.5, 0.4, 0.3], [0.1, 0.2, 0.3], "too few points"),
        ([0.5, 0.4, float("nan"), 0.2], [0.1, 0.2, 0.3, 0.4], "non-finite"),
        ([0.5, 0.4, 0.3, 0.2], [0.1, 0.2, float("inf"), 0.4], "non-finite"),
        ([0.3, 0.3, 0.3, 0.3, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5], "constant entropy"),
        ([0.5, 0.4, 0.3, 0.2, 0.1], [0.4] * 5, "constant reward"),
    ],
)
def test_degenerate_points_give_a_no_fit_with_its_reason(hs, rs, reason):
    fit = fit_entropy_law(hs, rs)
    assert not fit.ok and reason in fit.reason
    assert math.isnan(fit.a) and math.isnan(fit.ceiling) and math.isnan(fit.r2) and fit.n == len(hs)
    assert judge(fit, 0.5, 1.0) == "no_fit"
    with pytest.raises(ValueError, match="one entropy per reward"):
        fit_entropy_law([0.1, 0.2], [0.1])


def test_judge_flags_poor_fits_and_ceilings_above_the_maximum():
    good = fit_entropy_law(*synthetic(a=0.8, b=1.5, n=50, noise=0.01))
    assert judge(good, 0.5, 1.0) == "ok"
    assert judge(good, 0.5, 0.6) == "ceiling_above_max" and judge(good, 0.5, None) == "ok"
    noisy = fit_entropy_law(*synthetic(a=0.8, b=1.5, n=50, noise=1.0, seed=3))
    assert noisy.r2 < 0.5 and judge(noisy, 0.5, 1.0) == "poor_fit"
    rising = fit_entropy_law([0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5])  # R rises with entropy: a < 0
    assert rising.a < 0 and rising.r2 > 0.99 and judge(rising, 0.5, 1.0) == "poor_fit"


def test_prefix_forecast_predicts_the_rest_and_scores_the_baselines():
    hs, rs = synthetic(a=0.8, b=1.5, n=100, noise=0.005, seed=1)
    result = prefix_forecast(hs, rs, share=0.15)
    assert result["fitted"] == 15 and result["predicted"] == 85
    # R keeps rising after the prefix, and over H 0.6 -> 0.1 e^H bends away from a line in H.
    assert result["rmse_law"] < 0.03 and result["rmse_law"] * 10 < result["rmse_last_value"]
    assert result["rmse_law"] < result["rmse_linear"]
    too_short = prefix_forecast(hs[:3], rs[:3])
    assert too_short["fit"]["reason"].startswith("too few points") and math.isnan(too_short["rmse_law"])


def history(n_steps: int, reward_every: int = 1, eval_every: int | None = None) -> list[dict]:
    """A log_history whose windows follow R = 1.5 - 0.8 e^H exactly."""
    entries = []
    for step in range(1, n_steps + 1):
        h = 0.6 - 0.5 * step / n_steps
        entry = {"step": step, "entropy": h, "loss": 0.0}
        if step % reward_every == 0:
            entry["rewards/accuracy_reward/mean"] = 1.5 - 0.8 * math.exp(h)
        entries.append(entry)
        if eval_every and step % eval_every == 0:
            entries.append({"step": step, "eval_rewards/accuracy_reward/mean": 1.5 - 0.8 * math.exp(h)})
    return entries


def test_law_points_average_windows_and_pair_evaluations():
    steps, hs, rs = law_points(history(23, reward_every=2), "rewards/accuracy_reward/mean", window=5)
    assert steps == [5, 10, 15, 20]  # the incomplete window 21-23 is left out
    assert hs[0] == pytest.approx(sum(0.6 - 0.5 * s / 23 for s in range(1, 6)) / 5)
    assert rs[0] == pytest.approx((1.5 - 0.8 * math.exp(0.6 - 1 / 23) + 1.5 - 0.8 * math.exp(0.6 - 2 / 23)) / 2)
    steps, hs, rs = law_points(history(40, eval_every=10), "eval_rewards/accuracy_reward/mean", window=4)
    assert steps == [10, 20, 30, 40]
    assert hs[1] == pytest.approx(sum(0.6 - 0.5 * s / 40 for s in range(17, 21)) / 4)
    with pytest.raises(ValueError, match="window"):
        law_points([], "reward", window=0)


def test_law_logs_give_the_ceiling_only_when_it_can_be_trusted():
    key = "rewards/accuracy_reward/mean"
    assert law_logs(history(15), key, window=5, min_r2=0.5, metric_max=1.0) == {}  # 3 windows: no fit yet
    logs = law_logs(history(40), key, window=5, min_r2=0.5, metric_max=1.0)
    assert logs["entropy_law/a"] == pytest.approx(0.8, rel=0.02) and logs["entropy_law/points"] == 8
    assert logs["entropy_law/ceiling"] == pytest.approx(0.7, abs=0.01)
    _, _, rs = law_points(history(40), key, window=5)
    assert logs["entropy_law/headroom"] == pytest.approx(logs["entropy_law/ceiling"] - rs[-1])
    capped = law_logs(history(40), key, window=5, min_r2=0.5, metric_max=0.6)
    assert capped["entropy_law/ceiling_above_max"] == 1.0 and "entropy_law/ceiling" not in capped
    assert "entropy_law/headroom" not in capped


def test_metric_key_resolves_reward_names_and_logged_keys():
    assert metric_key("accuracy_reward", ["accuracy_reward"], evaluates=False) == "rewards/accuracy_reward/mean"
    assert metric_key("accuracy_reward", ["accuracy_reward"], evaluates=True) == "eval_rewards/accuracy_reward/mean"
    assert metric_key("reward", ["f"], evaluates=False) == "reward"
    assert metric_key("held_out/greedy", ["f"], evaluates=True) == "held_out/greedy"
    with pytest.raises(ValueError, match="entropy_law_metric='accuracy_reward' is not one of the reward functions"):
        metric_key("accuracy_reward", ["digit_share_reward"], evaluates=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("entropy_law_window", 0, "entropy_law_window=0 must be a whole number"),
        ("entropy_law_metric", " ", "entropy_law_metric is empty"),
        ("entropy_law_min_r2", 1.5, "entropy_law_min_r2=1.5 must be a number <= 1"),
        ("entropy_law_metric_max", float("inf"), "entropy_law_metric_max=inf must be a finite number"),
    ],
)
def test_config_rejects_bad_entropy_law_fields(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        EdgeGRPOConfig(output_dir=str(tmp_path), use_cpu=True, entropy_law=True, **{field: value})


def test_law_command_on_a_committed_run(tmp_path):
    out = tmp_path / "law.png"
    result = runner.invoke(app, ["law", str(COMMITTED_RUN), "--window", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "reward:" in result.output and "R² 0.9" in result.output
    assert "ceiling above the metric's maximum" in result.output  # training reward: not entropy-bound (b - a > 1)
    assert "first 15%" in result.output and "last value carried forward" in result.output
    assert "eval_all/box/pass@1" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_law_command_refuses_what_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["law", str(tmp_path)])
    assert result.exit_code == 2 and "is not a training run" in result.output
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    result = runner.invoke(app, ["law", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "no 'logs'" in result.output


def test_law_command_on_a_checkpoint_folder_and_an_output_folder(tmp_path):
    """A run folder whose newest checkpoint holds the history (a synthetic log_history that follows the law)."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoint-40"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history(40)}))
    shutil.copy(checkpoint / "trainer_state.json", tmp_path / "trainer_state.json")
    for folder in (run, checkpoint):
        result = runner.invoke(app, ["law", str(folder), "--window", "5", "--out", str(tmp_path / "x.png")])
        assert result.exit_code == 0, result.output
        assert "rewards/accuracy_reward/mean" in result.output and "ceiling 0.70" in result.output
        assert "R² 1.000" in result.output


@pytest.mark.slow
def test_two_processes_log_the_law_identically_and_resume_it(tmp_path, tiny_model_path):
    ranks = launch_two_ranks(tiny_model_path, tmp_path, None, 29541, script=SCRIPTS / "entropy_law_two_ranks.py")
    full = [r["full"] for r in ranks]
    law = [
        [{k: v for k, v in e.items() if k.startswith("entropy_law/")} | {"step": e["step"]} for e in h] for h in full
    ]
    fitted = [e for e in law[0] if "entropy_law/a" in e]
    # One point per log (window 1): the first fit at the 4th log, then at every log.
    assert [e["step"] for e in fitted] == [4, 5, 6]
    assert [e["entropy_law/points"] for e in fitted] == [4.0, 5.0, 6.0]
    assert law[0] == law[1]  # the same on both processes (computed from the averaged logs)
    # The logged values are the fit of the logged points: recomputed here from the history.
    for entry in fitted:
        history = [e for e in full[0] if e["step"] <= entry["step"]]
        _, hs, rs = law_points(history, "rewards/digit_share_reward/mean", window=1)
        fit = fit_entropy_law(hs, rs)
        assert entry["entropy_law/a"] == pytest.approx(fit.a) and entry["entropy_law/r2"] == pytest.approx(fit.r2)
        assert ("entropy_law/ceiling" in entry) == (fit.a > 0)
    # The resumed run (from checkpoint-3) logs the same law at steps 4-6 as the uninterrupted run.
    resumed = [e for e in ranks[0]["resumed"] if "entropy_law/a" in e]
    assert [e["step"] for e in resumed] == [4, 5, 6]
    for before, after in zip(fitted, resumed, strict=True):
        for key, value in before.items():
            assert after[key] == pytest.approx(value, rel=1e-6), key
    # `edge-trl law` on the real run folder (its newest checkpoint) prints the fit the callback logged last.
    last = fitted[-1]
    result = runner.invoke(app, ["law", str(tmp_path / "full"), "--window", "1", "--metric", "digit_share_reward"])
    assert result.exit_code == 2 and "never logged 'digit_share_reward'" in result.output  # a name, not a logged key
    assert "rewards/digit_share_reward/mean" in result.output  # listed among the keys it could fit
    key = "rewards/digit_share_reward/mean"
    result = runner.invoke(app, ["law", str(tmp_path / "full" / "checkpoint-6"), "--window", "1", "--metric", key])
    assert result.exit_code == 0, result.output
    assert f"R = -{last['entropy_law/a']:.3f}*exp(H) + {last['entropy_law/b']:.3f}" in result.output


def test_plot_draws_the_law_panel_next_to_the_curves(tmp_path):
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(COMMITTED_RUN), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "entropy law: R against H" in result.output and "entropy" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_trainer_names_an_unknown_law_metric(tmp_path, tiny_model_path):
    from edge_trl import EdgeGRPOTrainer
    from edge_trl.testing import digit_share_reward, tiny_addition_dataset

    from _helpers import tiny_config

    args = tiny_config(tmp_path, entropy_law=True)  # default metric: accuracy_reward, not among the rewards
    with pytest.raises(ValueError, match="entropy_law_metric='accuracy_reward' is not one of the reward functions"):
        EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args,
                        train_dataset=tiny_addition_dataset(8))  # fmt: skip


def test_a_run_that_evaluates_fits_the_held_out_metric(tmp_path, tiny_model_path):
    from edge_trl import EdgeGRPOTrainer
    from edge_trl.testing import digit_share_reward, tiny_addition_dataset

    from _helpers import tiny_config

    args = tiny_config(
        tmp_path, max_steps=5, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=8, entropy_law=True,
        entropy_law_metric="digit_share_reward", entropy_law_window=1, entropy_law_min_r2=-1e9,
    )  # fmt: skip
    trainer = EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=digit_share_reward, args=args,
                              train_dataset=tiny_addition_dataset(32), eval_dataset=tiny_addition_dataset(8))  # fmt: skip
    trainer.train()
    history = trainer.state.log_history
    key = "eval_rewards/digit_share_reward/mean"
    # Refitted at each evaluation from the 4th on; the training logs between carry the latest fit.
    fitted = [e for e in history if "entropy_law/a" in e and key in e]
    assert [(e["step"], e["entropy_law/points"]) for e in fitted] == [(4, 4.0), (5, 5.0)]
    train_log = next(e for e in history if e["step"] == 5 and "entropy" in e)
    assert train_log["entropy_law/a"] == fitted[0]["entropy_law/a"]
    _, hs, rs = law_points(history, key, window=1)
    assert rs == [e[key] for e in history if key in e]
    assert fitted[-1]["entropy_law/a"] == pytest.approx(fit_entropy_law(hs, rs).a)
