"""Does the entropy-performance law R = -a exp(H) + b (Cui et al., arXiv 2505.22617) hold on edge-trl's committed runs?

Reads every committed run in ``benchmarks/results`` (nothing is trained): the evidence grids (round 1, round 2's
entropy and advantage grids, 5 seeds each; round 3's peers grid, with Clip-Cov and KL-Cov read from round 2's entropy
grid as ``evidence.py --grid peers`` does), round 2's single-seed calibration runs, and the CPU miniature (3 seeds)
and its stable variant (1 seed). For each run it fits the law (``edge_trl.entropy_law``) to the training reward and
to the held-out metric (pass@1 of the evidence grids, greedy accuracy of the miniature) and tests, with 95% bootstrap
intervals over seeds (10,000 resamples, per-seed paired differences against GRPO, as ``evidence.py``):

1. the law fits: R² per run;
2. a fit on the first 15% of the points predicts the rest better than the last value carried forward and than a
   straight line in H (RMSE differences, law minus baseline);
3. a and b are the same across methods (the paper's "algorithm-agnostic" claim): the per-seed differences of a and b
   against GRPO, and how well GRPO's curve (same seed) predicts another method's points, against how well it predicts
   another GRPO seed's;
4. whether Clip-Cov and KL-Cov, and TRL's entropy controls (round 3), reach a higher fitted ceiling b - a than GRPO,
   and how many runs' ceilings lie above the metric's maximum.

Usage: ``python benchmarks/entropy_law.py [--out benchmarks/results/entropy_law] [--peers-seeds 0 1 2 3]`` (a few
seconds): writes ``summary.json``, ``table.md`` and ``law.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

from edge_trl.entropy_law import MIN_POINTS, auto_window, fit_entropy_law, judge, law_points, prefix_forecast
from edge_trl.plotting import load_run_json

RESULTS = Path(__file__).parent / "results"
POINTS = 40  # windows per run for the training reward (the run's entropy logs cut into this many)
SHARE = 0.15
MIN_R2, METRIC_MAX = 0.5, 1.0
RESAMPLES = 10_000

# grid name -> (description, run loader); a grid's runs are {(method, seed): history}.
GRIDS = {
    "round1": "round 1: mixed task, 200 steps (5 methods x 5 seeds)",
    "round2-entropy": "round 2, part 1: easy part, 3,000 steps (3 methods x 5 seeds)",
    "round2-advantage": "round 2, part 2: mixed task, 200 steps (6 methods x 5 seeds)",
    "round3-peers": "round 3, part A: easy part, 3,000 steps (GRPO, Clip-Cov, KL-Cov and 4 TRL entropy controls)",
    "miniature": "CPU miniature: 300 steps (7 methods x 3 seeds)",
}
PEERS_REUSED = ("clip-cov", "kl-cov")  # read from round 2's entropy grid, as evidence.py's --reuse-methods
SINGLE_RUNS = ("calibration", "miniature-stable")
TRAIN, HELD_OUT = "train", "held_out"


def evidence_runs(folder: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    runs = {}
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        runs[(run["method"], int(run["seed"]))] = load_run_json(path)
    return runs


def peers_runs(folder: Path, reused: Path, seeds: list[int] | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The peers grid's own runs, then Clip-Cov's and KL-Cov's from round 2 where the grid has none."""
    runs = evidence_runs(folder)
    for key, history in evidence_runs(reused).items():
        if key[0] in PEERS_REUSED:
            runs.setdefault(key, history)
    return {key: history for key, history in runs.items() if seeds is None or key[1] in seeds}


def miniature_runs(path: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            entry = {k: float(v) for k, v in row.items() if k not in ("method", "seed", "step") and v != ""}
            runs.setdefault((row["method"], int(row["seed"])), []).append({"step": int(row["step"]), **entry})
    return runs


def calibration_runs(folder: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    return {(path.stem, 0): load_run_json(path) for path in sorted(folder.glob("*.json"))}


def metrics_of(history: list[dict[str, Any]]) -> dict[str, str]:
    logged = {key for entry in history for key in entry}
    held_out = "eval_all/box/pass@1" if "eval_all/box/pass@1" in logged else "held_out/greedy"
    return {TRAIN: "reward", HELD_OUT: held_out}


def analyse_run(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    window = auto_window(history, POINTS)
    _, hs, rs = law_points(history, metric, window)
    fit = fit_entropy_law(hs, rs)
    forecast = prefix_forecast(hs, rs, SHARE)
    # A forecast is a test only when it predicts at least twice the points it fitted (5 evaluations are not enough).
    testable = forecast["predicted"] >= 2 * forecast["fitted"]
    return {
        "metric": metric,
        "window": window,
        "points": len(hs),
        "entropy_range": [min(hs), max(hs)] if hs else None,
        **{k: fit.as_dict()[k] for k in ("a", "b", "ceiling", "r2", "rmse", "reason")},
        "verdict": judge(fit, MIN_R2, METRIC_MAX),
        "forecast": {**forecast, "testable": testable},
        "_points": (hs, rs),
    }


def bootstrap_ci(values: list[float], seed: int = 0) -> list[float]:
    """Mean and 95% percentile-bootstrap interval of the mean (as evidence.py)."""
    rng = random.Random(seed)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return [mean, mean, mean]
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(RESAMPLES))
    return [mean, means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]]


def side(ci: list[float]) -> str:
    return "below 0" if ci[2] < 0 else "above 0" if ci[1] > 0 else "not significant"


def rmse_under(analysis: dict[str, Any], a: float, b: float) -> float:
    hs, rs = analysis["_points"]
    return math.sqrt(statistics.fmean([(b - a * math.exp(h) - r) ** 2 for h, r in zip(hs, rs, strict=True)]))


def grid_claims(results: dict[tuple[str, int], dict[str, dict[str, Any]]]) -> dict[str, Any]:
    methods = sorted({m for m, _ in results}, key=lambda m: (m != "grpo", m))
    seeds = sorted({s for _, s in results})
    claims: dict[str, Any] = {}
    for kind in (TRAIN, HELD_OUT):
        by = {key: value[kind] for key, value in results.items()}
        fitted = {key: r for key, r in by.items() if r["reason"] is None}
        table: dict[str, Any] = {"metric": next(iter(by.values()))["metric"], "methods": {}}
        for method in methods:
            runs = [fitted[(method, s)] for s in seeds if (method, s) in fitted]
            entry: dict[str, Any] = {"runs": len(runs), "fits": sum(r["reason"] is None for r in runs)}
            if runs:
                entry["r2"] = bootstrap_ci([r["r2"] for r in runs])
                entry["r2_at_least_0.9"] = sum(r["r2"] >= 0.9 for r in runs)
                entry["ceiling_above_max"] = sum(r["verdict"] == "ceiling_above_max" for r in runs)
                entry["poor_fit"] = sum(r["verdict"] == "poor_fit" for r in runs)
                entry["a"] = bootstrap_ci([r["a"] for r in runs])
                entry["b"] = bootstrap_ci([r["b"] for r in runs])
                entry["ceiling"] = bootstrap_ci([r["ceiling"] for r in runs])
            tested = [
                r["forecast"] for r in runs if r["forecast"]["testable"] and r["forecast"]["fit"]["reason"] is None
            ]
            if tested:
                entry["forecast"] = {
                    "runs": len(tested),
                    "fitted_points": tested[0]["fitted"],
                    "predicted_points": tested[0]["predicted"],
                    "rmse_law": bootstrap_ci([f["rmse_law"] for f in tested]),
                    "rmse_last_value": bootstrap_ci([f["rmse_last_value"] for f in tested]),
                    "rmse_linear": bootstrap_ci([f["rmse_linear"] for f in tested]),
                    "law_minus_last_value": bootstrap_ci([f["rmse_law"] - f["rmse_last_value"] for f in tested]),
                    "law_minus_linear": bootstrap_ci([f["rmse_law"] - f["rmse_linear"] for f in tested]),
                    "law_beats_last_value": sum(f["rmse_law"] < f["rmse_last_value"] for f in tested),
                    "law_beats_linear": sum(f["rmse_law"] < f["rmse_linear"] for f in tested),
                }
            table["methods"][method] = entry

        # Against GRPO, paired by seed, on the runs whose fits describe them (no no-fit, no poor fit).
        usable = {key: r for key, r in fitted.items() if r["verdict"] != "poor_fit"}
        versus: dict[str, Any] = {}
        grpo_seeds = [s for s in seeds if ("grpo", s) in usable]
        # Reference for the cross-prediction: GRPO's curve of seed s on the GRPO run of the next seed.
        reference = [
            rmse_under(usable[("grpo", t)], usable[("grpo", s)]["a"], usable[("grpo", s)]["b"])
            / usable[("grpo", t)]["rmse"]
            for s, t in zip(grpo_seeds, grpo_seeds[1:] + grpo_seeds[:1], strict=True)
            if s != t
        ]
        for method in methods[1:]:
            pairs = [s for s in grpo_seeds if (method, s) in usable]
            if len(pairs) < 2:
                versus[method] = {"seeds": len(pairs)}
                continue
            other, base = [usable[(method, s)] for s in pairs], [usable[("grpo", s)] for s in pairs]
            cross = [rmse_under(o, g["a"], g["b"]) / o["rmse"] for o, g in zip(other, base, strict=True)]
            versus[method] = {
                "seeds": len(pairs),
                "a_minus_grpo": bootstrap_ci([o["a"] - g["a"] for o, g in zip(other, base, strict=True)]),
                "b_minus_grpo": bootstrap_ci([o["b"] - g["b"] for o, g in zip(other, base, strict=True)]),
                "ceiling_minus_grpo": bootstrap_ci(
                    [o["ceiling"] - g["ceiling"] for o, g in zip(other, base, strict=True)]
                ),
                "rmse_under_grpo_curve_over_own": bootstrap_ci(cross),
            }
        table["versus_grpo"] = versus
        table["grpo_other_seed_rmse_over_own"] = bootstrap_ci(reference) if reference else None
        claims[kind] = table
    return claims


def fmt(ci: list[float] | None, digits: int = 3) -> str:
    if ci is None:
        return "–"
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    for grid, claims in summary["grids"].items():
        lines.append(f"**{GRIDS[grid]}**\n")
        for kind in (TRAIN, HELD_OUT):
            table = claims[kind]
            lines.append(f"{'training reward' if kind == TRAIN else 'held-out'} (`{table['metric']}`):\n")
            lines.append(
                "| method | fits | R² | R² ≥ 0.9 | b − a > max | poor | a | b | ceiling b − a | forecast RMSE: law | "
                "last value | line in H | law − last value (law better) | law − line (law better) |"
            )
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for method, e in table["methods"].items():
                f = e.get("forecast")
                lines.append(
                    f"| {method} | {e['fits']}/{e['runs']} | {fmt(e.get('r2'), 2)} | {e.get('r2_at_least_0.9', 0)} | "
                    f"{e.get('ceiling_above_max', 0)} | {e.get('poor_fit', 0)} | {fmt(e.get('a'), 2)} | "
                    f"{fmt(e.get('b'), 2)} | {fmt(e.get('ceiling'), 2)} | "
                    + (
                        f"{fmt(f['rmse_law'])} | {fmt(f['rmse_last_value'])} | {fmt(f['rmse_linear'])} | "
                        f"{fmt(f['law_minus_last_value'])} ({f['law_beats_last_value']}/{f['runs']}) | "
                        f"{fmt(f['law_minus_linear'], 4)} ({f['law_beats_linear']}/{f['runs']}) |"
                        if f
                        else "– | – | – | – | – |"
                    )
                )
            versus = table["versus_grpo"]
            if any("a_minus_grpo" in v for v in versus.values()):
                reference = fmt(table["grpo_other_seed_rmse_over_own"], 2)
                lines.append("")
                lines.append(
                    f"| against GRPO (paired by seed) | seeds | a − a_GRPO | b − b_GRPO | ceiling − GRPO's | RMSE under "
                    f"GRPO's curve / own (GRPO, another seed: {reference}) |"
                )
                lines.append("|---|---|---|---|---|---|")
                for method, v in versus.items():
                    if "a_minus_grpo" not in v:
                        lines.append(f"| {method} | {v['seeds']} | – | – | – | – |")
                        continue
                    lines.append(
                        f"| {method} | {v['seeds']} | {fmt(v['a_minus_grpo'], 2)} | {fmt(v['b_minus_grpo'], 2)} | "
                        f"{fmt(v['ceiling_minus_grpo'])} | {fmt(v['rmse_under_grpo_curve_over_own'], 2)} |"
                    )
            lines.append("")
    return "\n".join(lines)


def plot(grid_results: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("round2-entropy", TRAIN, "round 2, part 1: training reward"),
        ("round2-entropy", HELD_OUT, "round 2, part 1: held-out pass@1"),
        ("round1", TRAIN, "round 1: training reward"),
        ("round2-advantage", TRAIN, "round 2, part 2: training reward"),
        ("round3-peers", TRAIN, "round 3, part A: training reward"),
        ("round3-peers", HELD_OUT, "round 3, part A: held-out pass@1"),
        ("miniature", TRAIN, "miniature: training reward"),
        ("miniature", HELD_OUT, "miniature: held-out greedy accuracy"),
    ]
    figure, axes = plt.subplots(2, 4, figsize=(21, 9))
    for axis, (grid, kind, title) in zip(axes.flat, panels, strict=True):
        methods = sorted({m for m, _ in grid_results[grid]}, key=lambda m: (m != "grpo", m))
        for index, method in enumerate(methods):
            color = f"C{index}"
            for (m, _), result in sorted(grid_results[grid].items()):
                if m != method:
                    continue
                analysis = result[kind]
                hs, rs = analysis["_points"]
                axis.scatter(hs, rs, s=6, color=color, alpha=0.35)
                if analysis["reason"] is None and hs:
                    grid_h = [min(hs) + (max(hs) - min(hs)) * i / 30 for i in range(31)]
                    axis.plot(grid_h, [analysis["b"] - analysis["a"] * math.exp(h) for h in grid_h], color=color,
                              linewidth=1, alpha=0.8)  # fmt: skip
            axis.plot([], [], color=color, label=method)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("entropy H (window mean)")
        axis.set_ylabel("R")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("R against H per run (points: windows; lines: each run's fit R = b - a e^H over its entropy range)")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "entropy_law")
    parser.add_argument("--peers-seeds", nargs="*", type=int, help="the peers grid's seeds (default: every run)")
    args = parser.parse_args()
    loaded = {
        "round1": evidence_runs(RESULTS / "evidence" / "runs"),
        "round2-entropy": evidence_runs(RESULTS / "evidence2" / "entropy" / "runs"),
        "round2-advantage": evidence_runs(RESULTS / "evidence2" / "advantage" / "runs"),
        "round3-peers": peers_runs(
            RESULTS / "evidence3" / "peers" / "runs", RESULTS / "evidence2" / "entropy" / "runs", args.peers_seeds
        ),
        "miniature": miniature_runs(RESULTS / "miniature" / "metrics.csv"),
        "calibration": calibration_runs(RESULTS / "evidence2" / "calibration"),
        "miniature-stable": miniature_runs(RESULTS / "miniature-stable" / "metrics.csv"),
    }
    grid_results = {
        grid: {
            key: {kind: analyse_run(history, metric) for kind, metric in metrics_of(history).items()}
            for key, history in runs.items()
        }
        for grid, runs in loaded.items()
    }
    # How R² of the training reward depends on the smoothing: the runs of each grid cut into 10, 20, 40, 80 windows.
    sensitivity = {
        grid: {
            str(points): bootstrap_ci(
                [
                    fit_entropy_law(*law_points(history, "reward", auto_window(history, points))[1:]).r2
                    for history in loaded[grid].values()
                ]
            )
            for points in (10, 20, 40, 80)
        }
        for grid in GRIDS
    }
    per_run = [
        {"grid": grid, "run": f"{method}-{seed}" if grid != "calibration" else method, "kind": kind,
         **{k: v for k, v in analysis.items() if k != "_points"}}
        for grid, results in grid_results.items()
        for (method, seed), kinds in sorted(results.items())
        for kind, analysis in kinds.items()
    ]  # fmt: skip
    summary = {
        "settings": {
            "law": "R = -a exp(H) + b, least squares in exp(H) (edge_trl.entropy_law)",
            "training_points_per_run": POINTS,
            "held_out_pairing": "each evaluation with the mean entropy of the window of logs up to its step",
            "forecast_share": SHARE,
            "forecast_min_points": MIN_POINTS,
            "forecast_tested_when": "the rest has at least twice the fitted points",
            "min_r2": MIN_R2,
            "metric_max": METRIC_MAX,
            "bootstrap": f"95% percentile, {RESAMPLES} resamples of the seeds, mean",
        },
        "grids": {grid: grid_claims(grid_results[grid]) for grid in GRIDS},
        "training_r2_by_points": sensitivity,
        "runs": per_run,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    table = markdown(summary)
    table += "\n\n| training-reward R² (all runs of the grid) | 10 windows | 20 | 40 | 80 |\n|---|---|---|---|---|\n"
    for grid, by_points in sensitivity.items():
        table += f"| {GRIDS[grid]} | " + " | ".join(fmt(ci, 2) for ci in by_points.values()) + " |\n"
    (args.out / "table.md").write_text(table)
    plot(grid_results, args.out / "law.png")
    print(table)
    for grid in SINGLE_RUNS:
        for run in (r for r in per_run if r["grid"] == grid):
            f = run["forecast"]
            print(
                f"{grid} {run['run']} {run['kind']}: R² {run['r2']:.3f} ceiling {run['ceiling']:.3f} {run['verdict']}"
                f"; forecast law {f['rmse_law']:.4f} last {f['rmse_last_value']:.4f} line {f['rmse_linear']:.4f}"
            )


if __name__ == "__main__":
    main()
