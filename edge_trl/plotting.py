"""`edge-trl plot`: training curves of one or more runs, one line per run, from their logged history."""

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


def load_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``log_history`` of a run: its ``trainer_state.json``, or that of its newest ``checkpoint-*``."""
    run_dir = Path(run_dir)
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
    if not drawn:
        raise NotARunError(f"None of {[str(d) for d in run_dirs]} logged any of the plotted metrics.")
    columns = 2
    rows = (len(drawn) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(11, 3.2 * rows), squeeze=False)
    for axis, (title, lines) in zip(axes.flat, drawn, strict=False):
        for label, steps, values in lines:
            axis.plot(steps, values, label=label, linewidth=1.5)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(drawn) :]:
        axis.set_visible(False)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return [title for title, _ in drawn]
