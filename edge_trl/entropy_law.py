"""The entropy–performance law of RL on language models, fitted to a run (Cui et al., arXiv 2505.22617).

Over an RL run, downstream performance R and policy entropy H follow (the paper's first result, its predictable
entropy-performance transformation)

    R = -a * exp(H) + b

so performance is bought with entropy, and once entropy is spent (H = 0) it stops at the **ceiling** R = b - a.
The paper fits a and b on the first 36 steps of a run and predicts the next 200 within about 1% RMSE, and finds
a and b set by the model and the data, barely by the RL algorithm.

The law is linear in x = e^H (R = b - a x), so the fit is ordinary least squares in x. Everything here is plain
Python on (H, R) points, free of torch and trl:

* [`fit_entropy_law`][edge_trl.entropy_law.fit_entropy_law]: a, b, the ceiling, R², RMSE and the number of points, or a no-fit with its reason;
* [`law_points`][edge_trl.entropy_law.law_points]: the (H, R) points of a logged history (``trainer_state.json``'s ``log_history``), smoothed
  over windows of logging steps;
* [`prefix_forecast`][edge_trl.entropy_law.prefix_forecast]: fit on the first share of a run, predict the rest, and score the prediction against two
  baselines (the last value carried forward, and a straight line in H);
* [`law_logs`][edge_trl.entropy_law.law_logs]: what ``edge_trl.entropy_law_callback.EntropyLawCallback`` adds to each log of a training run
  (kept apart, so that `edge-trl law` does not import transformers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Fewer windows than this give no fit: two points always fit a line exactly.
MIN_POINTS = 4
ENTROPY_KEY = "entropy"
PREFIX = "entropy_law/"


@dataclass(frozen=True)
class LawFit:
    """The fitted law, or a no-fit: ``reason`` says why and every number but ``n`` is NaN."""

    a: float
    b: float
    ceiling: float  # b - a: R at H = 0
    r2: float
    rmse: float
    n: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def predict(self, entropies: Sequence[float]) -> list[float]:
        """R = b - a e^H at each entropy (NaN for a no-fit)."""
        return [self.b - self.a * math.exp(h) for h in entropies]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _no_fit(n: int, reason: str) -> LawFit:
    nan = float("nan")
    return LawFit(nan, nan, nan, nan, nan, n, reason)


def fit_entropy_law(entropies: Sequence[float], rewards: Sequence[float], min_points: int = MIN_POINTS) -> LawFit:
    r"""Fit R = -a e^H + b by least squares in x = e^H (Cui et al. 2025, arXiv 2505.22617).

    With x = e^H: a = -cov(x, R) / var(x), b = mean(R) + a mean(x); the ceiling is b - a; R² = 1 - SS_res / SS_tot
    and RMSE = sqrt(SS_res / n) on the fitted points.

    A no-fit (``reason`` set, the numbers NaN) instead of a number when the points cannot determine the law:
    fewer than ``min_points`` points, a non-finite value, entropy (practically) constant, or R constant (R² is
    undefined). Unequal lengths are a caller's error and raise ``ValueError``.
    """
    if len(entropies) != len(rewards):
        raise ValueError(f"{len(entropies)} entropies for {len(rewards)} rewards: give one entropy per reward.")
    n = len(entropies)
    if n < min_points:
        return _no_fit(n, f"too few points: {n} < {min_points}")
    if not all(math.isfinite(v) for v in (*entropies, *rewards)):
        return _no_fit(n, "non-finite values: an entropy or reward is NaN or infinite")
    xs = [math.exp(h) for h in entropies]
    x_mean, r_mean = sum(xs) / n, sum(rewards) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    # Relative to the scale of x (>= 1 for H >= 0), so float noise in a constant series does not count as spread.
    if sxx <= (1e-12 * max(1.0, x_mean)) ** 2 * n:
        return _no_fit(n, "constant entropy: H does not vary, so nothing ties R to it")
    ss_tot = sum((r - r_mean) ** 2 for r in rewards)
    if ss_tot <= (1e-12 * max(1.0, abs(r_mean))) ** 2 * n:
        return _no_fit(n, "constant reward: R does not vary, so R² is undefined")
    sxr = sum((x - x_mean) * (r - r_mean) for x, r in zip(xs, rewards, strict=True))
    a = -sxr / sxx
    b = r_mean + a * x_mean
    ss_res = sum((r - (b - a * x)) ** 2 for x, r in zip(xs, rewards, strict=True))
    return LawFit(a=a, b=b, ceiling=b - a, r2=1.0 - ss_res / ss_tot, rmse=math.sqrt(ss_res / n), n=n)


def judge(fit: LawFit, min_r2: float, metric_max: float | None) -> str:
    """Whether the fitted ceiling can be read as one: 'ok', or why not.

    'no_fit' (degenerate points), 'poor_fit' (R² < ``min_r2``, or a <= 0: R does not rise as entropy falls, so the
    law does not describe the run), 'ceiling_above_max' (b - a above the metric's maximum: the run is not
    entropy-bound within the entropies it covered, and the extrapolation to H = 0 means nothing).
    """
    if not fit.ok:
        return "no_fit"
    if fit.r2 < min_r2 or fit.a <= 0:
        return "poor_fit"
    if metric_max is not None and fit.ceiling > metric_max:
        return "ceiling_above_max"
    return "ok"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def is_evaluation(metric: str) -> bool:
    """A held-out metric, logged at evaluations only: TRL's ``eval_*`` keys and the embedded task's ``held_out/*``."""
    return metric.startswith(("eval_", "held_out/"))


def law_points(
    history: Sequence[dict[str, Any]], metric: str, window: int, entropy_key: str = ENTROPY_KEY
) -> tuple[list[float], list[float], list[float]]:
    """(steps, H, R) points of a logged history for the law, smoothed over windows.

    The entries that log ``entropy_key`` are cut, in order, into consecutive windows of ``window`` entries; a trailing
    incomplete window is left out. A training metric (logged with the entropy, maybe not at every entry, e.g. once per
    rollout) gives one point per window that logged it: the window's mean H and mean R, at the window's last step.
    An evaluation metric (`is_evaluation`; logged now and then) gives one point per evaluation: its
    value, with the mean H of the ``window`` entropy entries up to its step (an evaluation before the first logged
    entropy takes the first ones). The points depend only on the history up to each point, so a run recomputes the same
    points after a resume and on every process.
    """
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (logging steps per point).")
    entropy = [(e["step"], e[entropy_key]) for e in history if entropy_key in e and "step" in e]
    values = [(e["step"], e[metric]) for e in history if metric in e and "step" in e]
    steps: list[float] = []
    hs: list[float] = []
    rs: list[float] = []
    if is_evaluation(metric):
        for step, value in values:
            before = [h for s, h in entropy if s <= step][-window:] or [h for _, h in entropy[:window]]
            if before:
                steps.append(step)
                hs.append(_mean(before))
                rs.append(value)
        return steps, hs, rs
    start = 0
    previous_end = -math.inf
    while start + window <= len(entropy):
        chunk = entropy[start : start + window]
        end = chunk[-1][0]
        in_window = [v for s, v in values if previous_end < s <= end]
        if in_window:
            steps.append(end)
            hs.append(_mean([h for _, h in chunk]))
            rs.append(_mean(in_window))
        previous_end, start = end, start + window
    return steps, hs, rs


def prefix_forecast(entropies: Sequence[float], rewards: Sequence[float], share: float = 0.15) -> dict[str, Any]:
    """Fit the law on the first ``share`` of the points, predict R on the rest from their entropies, and compare.

    Returns the prefix fit, the number of points fitted and predicted, and the RMSE on the rest of: the law, the last
    fitted value carried forward, and a straight line in H (R = c + d H, least squares on the same prefix). RMSEs are
    NaN when the prefix gives no fit or nothing is left to predict.
    """
    n = len(entropies)
    k = max(MIN_POINTS, math.ceil(share * n))
    fit = fit_entropy_law(entropies[:k], rewards[:k])
    rest_h, rest_r = list(entropies[k:]), list(rewards[k:])
    nan = float("nan")
    result: dict[str, Any] = {"fit": fit.as_dict(), "fitted": min(k, n), "predicted": len(rest_r)}
    result.update(rmse_law=nan, rmse_last_value=nan, rmse_linear=nan)
    if not fit.ok or not rest_r:
        return result

    def rmse(predicted: Sequence[float]) -> float:
        return math.sqrt(_mean([(p - r) ** 2 for p, r in zip(predicted, rest_r, strict=True)]))

    head_h, head_r = entropies[:k], rewards[:k]
    h_mean, r_mean = _mean(head_h), _mean(head_r)
    slope = sum((h - h_mean) * (r - r_mean) for h, r in zip(head_h, head_r, strict=True)) / sum(
        (h - h_mean) ** 2 for h in head_h
    )
    result["rmse_law"] = rmse(fit.predict(rest_h))
    result["rmse_last_value"] = rmse([head_r[-1]] * len(rest_r))
    result["rmse_linear"] = rmse([r_mean + slope * (h - h_mean) for h in rest_h])
    return result


# Keys `edge-trl law` fits when no --metric is given: the first training and the first held-out key a run logged.
TRAINING_METRICS = (
    "rewards/accuracy_reward/mean",
    "rewards/format_accuracy_reward/mean",
    "rewards/boxed_answer_reward/mean",
    "reward",
)
HELD_OUT_METRICS = (
    "eval_rewards/accuracy_reward/mean",
    "eval_all/box/pass@1",
    "held_out/greedy",
    "eval_reward",
)


def default_metrics(history: Sequence[dict[str, Any]]) -> list[str]:
    logged = {key for entry in history for key in entry}
    found = [next((k for k in keys if k in logged), None) for keys in (TRAINING_METRICS, HELD_OUT_METRICS)]
    return [k for k in found if k is not None]


def auto_window(history: Sequence[dict[str, Any]], points: int = 40) -> int:
    """Logs per window that cut the run's entropy logs into about ``points`` windows."""
    return max(1, sum(ENTROPY_KEY in e for e in history) // points)


def analyse(
    history: Sequence[dict[str, Any]],
    metric: str,
    window: int,
    share: float = 0.15,
    min_r2: float = 0.5,
    metric_max: float | None = 1.0,
) -> dict[str, Any]:
    """Everything `edge-trl law` says about one metric of a run: points, fit, verdict, headroom, prefix forecast."""
    steps, hs, rs = law_points(history, metric, window)
    fit = fit_entropy_law(hs, rs)
    verdict = judge(fit, min_r2, metric_max)
    return {
        "metric": metric,
        "window": window,
        "steps": steps,
        "entropy": hs,
        "value": rs,
        "fit": fit,
        "verdict": verdict,
        "headroom": fit.ceiling - rs[-1] if verdict == "ok" else None,
        "forecast": prefix_forecast(hs, rs, share),
    }


def metric_key(metric: str, reward_names: Sequence[str], evaluates: bool) -> str:
    """The logged key the law fits, from ``entropy_law_metric``.

    A reward function's name (or 'reward', the weighted sum) means its logged mean, ``rewards/<name>/mean`` (or
    ``reward``), of the held-out evaluation (``eval_`` prefix) when the run evaluates; any other value (containing
    '/' or starting with 'eval_') is a logged key, used as it is. Raises ``ValueError`` for an unknown reward name.
    """
    if "/" in metric or metric.startswith("eval_"):
        return metric
    if metric != "reward" and metric not in reward_names:
        raise ValueError(
            f"entropy_law_metric={metric!r} is not one of the reward functions {list(reward_names)}: name one of "
            "them, 'reward' for the weighted sum, or a logged key such as 'rewards/accuracy_reward/mean'."
        )
    key = "reward" if metric == "reward" else f"rewards/{metric}/mean"
    return f"eval_{key}" if evaluates else key


def law_logs(
    history: Sequence[dict[str, Any]], metric: str, window: int, min_r2: float, metric_max: float | None
) -> dict[str, float]:
    """What ``EntropyLawCallback`` logs for a history: empty until the points give a fit.

    ``entropy_law/{a,b,r2,rmse,points}`` with every fit; ``entropy_law/ceiling`` and ``entropy_law/headroom`` (the
    ceiling minus the last point's R) only when [`judge`][edge_trl.entropy_law.judge] says 'ok'; otherwise a 1.0 under
    ``entropy_law/poor_fit`` or ``entropy_law/ceiling_above_max``.
    """
    _, hs, rs = law_points(history, metric, window)
    fit = fit_entropy_law(hs, rs)
    if not fit.ok:
        return {}
    logs = {f"{PREFIX}a": fit.a, f"{PREFIX}b": fit.b, f"{PREFIX}r2": fit.r2, f"{PREFIX}rmse": fit.rmse}
    logs[f"{PREFIX}points"] = float(fit.n)
    verdict = judge(fit, min_r2, metric_max)
    if verdict == "ok":
        logs[f"{PREFIX}ceiling"] = fit.ceiling
        logs[f"{PREFIX}headroom"] = fit.ceiling - rs[-1]
    else:
        logs[f"{PREFIX}{verdict}"] = 1.0
    return logs
