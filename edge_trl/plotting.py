"""`edge-trl plot`: training curves of one or more runs, one line per run, from their logged history; and the panels of
`edge-trl law` (R against H with the fitted entropy-performance law, `edge_trl.entropy_law`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_trl.checkpoints import checkpoint_dirs

# (title, candidate keys in order of preference): the first key a run logged is drawn.
PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("reward", ("reward",)),
    ("accuracy", ("rewards/accuracy_reward/mean", "rewards/format_accuracy_reward/mean", "gec/accuracy_after")),
    ("held-out accuracy (greedy)", ("held_out/greedy",)),
    ("entropy", ("entropy",)),
    ("advantage variance", ("edge/adv_var_after_eda", "edge/adv_var_before_eda")),
    ("collapsed-group share", ("edge/collapsed_group_share",)),
    ("token covariance (mean)", ("edge/cov_mean",)),
    ("Cov-selected tokens (mean cov)", ("edge/cov_selected_mean",)),
    ("KL-Cov penalty", ("edge/kl_cov_penalty",)),
]


class NotARunError(ValueError):
    """A folder without a logged training history."""


def load_run_json(path: Path) -> list[dict[str, Any]]:
    """The history of a benchmark run file (``benchmarks/evidence.py``): its ``logs``, and its ``evals`` as ``eval_*``
    entries."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NotARunError(f"{path}: not a readable JSON file ({error}).") from error
    if not isinstance(run, dict) or not isinstance(run.get("logs"), list):
        raise NotARunError(
            f"{path} has no 'logs' list: give a run folder, a checkpoint folder or a benchmark run JSON."
        )
    evals = [
        {"step": e["step"], **{f"eval_{k}": v for k, v in e.items() if k != "step"}}
        for e in run.get("evals", [])
        if "step" in e
    ]
    return sorted(run["logs"] + evals, key=lambda entry: entry.get("step", 0))


def load_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``log_history`` of a run: its ``trainer_state.json``, or that of its newest ``checkpoint-*``; a benchmark run
    JSON file (``logs`` and ``evals``) is read too."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".json":
        return load_run_json(run_dir)
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir}: no such folder.")
    candidates = [run_dir / "trainer_state.json"]
    candidates += [p / "trainer_state.json" for p in reversed(checkpoint_dirs(run_dir))]
    for path in candidates:
        if path.is_file():
            history = json.loads(path.read_text()).get("log_history", [])
            curve = run_dir / "accuracy_curve.json"  # held-out accuracy of the embedded default
            if curve.is_file():
                history = history + [
                    {"step": p["step"], "held_out/greedy": p["greedy"]} for p in json.loads(curve.read_text())
                ]
            return history
    raise NotARunError(
        f"{run_dir} is not a training run: it has no trainer_state.json, nor a checkpoint-*/trainer_state.json. "
        "Point to an --output-dir of `edge-trl train` (after its first checkpoint) or a checkpoint folder."
    )


def series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> list[str]:
    """Draw every panel some run has data for; returns the panel titles drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = [load_history(d) for d in run_dirs]
    labels = labels or [Path(d).name for d in run_dirs]
    drawn = []
    for title, keys in PANELS:
        lines = []
        for history, label in zip(histories, labels, strict=True):
            key = next((k for k in keys if series(history, k)[0]), None)
            if key is not None:
                lines.append((label, *series(history, key)))
        if lines:
            drawn.append((title, lines))
    law = law_panel_data(histories, labels)
    if not drawn:
        raise NotARunError(f"None of {[str(d) for d in run_dirs]} logged any of the plotted metrics.")
    columns = 2
    rows = (len(drawn) + bool(law) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(11, 3.2 * rows), squeeze=False)
    for axis, (title, lines) in zip(axes.flat, drawn, strict=False):
        for label, steps, values in lines:
            axis.plot(steps, values, label=label, linewidth=1.5)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if law:
        draw_law_panel(list(axes.flat)[len(drawn)], law)
        drawn.append((LAW_PANEL, []))
    for axis in list(axes.flat)[len(drawn) :]:
        axis.set_visible(False)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return [title for title, _ in drawn]


LAW_PANEL = "entropy law: R against H"


def law_panel_data(histories: list[list[dict[str, Any]]], labels: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, analysis) of each run whose training accuracy (or reward) gives a fit of the law."""
    from edge_trl.entropy_law import TRAINING_METRICS, analyse, auto_window

    found = []
    for history, label in zip(histories, labels, strict=True):
        logged = {key for entry in history for key in entry}
        metric = next((k for k in TRAINING_METRICS if k in logged), None)
        if metric is None:
            continue
        analysis = analyse(history, metric, auto_window(history))
        if analysis["fit"].ok:
            found.append((label, analysis))
    return found


def draw_law_panel(axis: Any, runs: list[tuple[str, dict[str, Any]]], title: str = LAW_PANEL) -> None:
    """R against H, one colour per run: the windows' points, the fitted R = b - a e^H from H = 0 to the highest H,
    and the ceiling b - a as a dashed line when it can be trusted (otherwise the legend says why not)."""
    import math

    for index, (label, analysis) in enumerate(runs):
        color = f"C{index}"
        fit, hs, rs = analysis["fit"], analysis["entropy"], analysis["value"]
        axis.scatter(hs, rs, s=10, color=color, alpha=0.6)
        if not fit.ok:
            axis.plot([], [], color=color, label=f"{label}: no fit ({fit.reason})")
            continue
        grid = [max(hs) * i / 50 for i in range(51)]
        verdict = analysis["verdict"]
        text = f"ceiling {fit.ceiling:.2f}" if verdict == "ok" else verdict.replace("_", " ")
        axis.plot(grid, fit.predict(grid), color=color, linewidth=1.5,
                  label=f"{label}: R = {fit.b:.2f} - {fit.a:.2f} e^H, R² {fit.r2:.2f}, {text}")  # fmt: skip
        if verdict == "ok" and math.isfinite(fit.ceiling):
            axis.axhline(fit.ceiling, color=color, linestyle="--", linewidth=1)
    axis.set_title(title)
    axis.set_xlabel("entropy H (window mean)")
    axis.set_ylabel("R")
    axis.set_xlim(left=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def plot_law(analyses: list[dict[str, Any]], out: str | Path, label: str = "run") -> None:
    """One `draw_law_panel` per metric, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(analyses), figsize=(5.5 * len(analyses), 4.2), squeeze=False)
    for axis, analysis in zip(axes.flat, analyses, strict=True):
        draw_law_panel(axis, [(label, analysis)], title=f"{analysis['metric']} against entropy")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
