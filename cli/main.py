"""Entry point of the `edge-trl` command.

`train` (built in `train_command.py`, one flag per config field) resolves and launches a run through `accelerate
launch`; `configs` lists the shipped accelerate configs and
recipes; `eval` scores a model on the math benchmarks; `plot` draws the curves of runs; `law` fits the
entropy-performance law to a run; `env` reports versions.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="edge-trl: entropy-aware GRPO (EDGE-GRPO, Clip-Cov, KL-Cov) on Hugging Face TRL.")

REPORTED_PACKAGES = ("edge-trl", "torch", "trl", "transformers", "peft", "accelerate", "datasets", "deepspeed", "vllm")


@app.command()
def env() -> None:
    """Print the versions of edge-trl and its stack, and the devices torch sees."""
    typer.echo(f"python: {platform.python_version()} ({platform.platform()})")
    for name in REPORTED_PACKAGES:
        try:
            typer.echo(f"{name}: {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name}: not installed")
    import torch

    devices = f"cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu only"
    typer.echo(f"devices: {devices}")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train with EdgeGRPOTrainer through `accelerate launch`; every config field is a flag (train --help)."""
    # The options are generated from the config dataclasses by a plain click command (train_command.py); typer only
    # hands it the arguments.
    from edge_trl.cli.train_command import TrainCommand

    TrainCommand().main(args=ctx.args, prog_name="edge-trl train")


@app.command()
def configs(name: Annotated[str | None, typer.Argument(help="A config or recipe to print.")] = None) -> None:
    """List the shipped accelerate configs and recipes, or print one."""
    from edge_trl.presets import shipped_accelerate_configs, shipped_recipes

    accelerate, recipes = shipped_accelerate_configs(), shipped_recipes()
    if name is not None:
        path = accelerate.get(name) or recipes.get(name)
        if path is None:
            _fail(f"no shipped config or recipe {name!r}: run `edge-trl configs` to list them.")
        typer.echo(path.read_text())
        return
    for title, entries in (("accelerate configs (--accelerate-config)", accelerate), ("recipes (--config)", recipes)):
        typer.echo(f"{title}:")
        for key, path in entries.items():
            first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line), "")
            typer.echo(f"  {key:<32} {first}")
        typer.echo("")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Output folders of runs (or checkpoint folders).")],
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("edge_trl_runs.png"),
    label: Annotated[list[str] | None, typer.Option(help="A label per run, in order (default: folder names).")] = None,
) -> None:
    """Plot reward, accuracy, entropy, advantage variance, collapsed-group share and Cov metrics of runs."""
    from edge_trl.plotting import NotARunError, plot_runs

    if label and len(label) != len(run_dirs):
        _fail(f"--label was given {len(label)} times for {len(run_dirs)} runs: give one per run, or none.")
    try:
        panels = plot_runs(run_dirs, out, labels=label or None)
    except NotARunError as error:
        _fail(str(error))
    typer.echo(f"wrote {out}: {', '.join(panels)}")


@app.command()
def law(
    run: Annotated[Path, typer.Argument(help="A run's output folder, a checkpoint folder, or a benchmark run JSON.")],
    metric: Annotated[
        list[str] | None,
        typer.Option(help="A logged key to fit (repeatable; default: the training accuracy and the held-out metric)."),
    ] = None,
    window: Annotated[
        int | None, typer.Option(min=1, help="Entropy logs per point (default: the run cut into about 40 points).")
    ] = None,
    prefix: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Share of the points the forecast is fitted on.")
    ] = 0.15,
    metric_max: Annotated[
        float | None, typer.Option(help="The metric's highest possible value; a ceiling above it is not one.")
    ] = 1.0,
    min_r2: Annotated[float, typer.Option(help="Below this R² the fit is called poor and no ceiling is given.")] = 0.5,
    out: Annotated[Path | None, typer.Option(help="A PNG of R against H with the fitted law (default: none).")] = None,
) -> None:
    """Fit the entropy-performance law R = -a*exp(H) + b (Cui et al.) to a run: a, b, the ceiling, R², and how well
    a fit on the first share of the run predicts the rest."""
    from edge_trl.entropy_law import analyse, auto_window, default_metrics
    from edge_trl.plotting import NotARunError, load_history, plot_law

    try:
        history = load_history(run)
    except NotARunError as error:
        _fail(str(error))
    metrics = metric or default_metrics(history)
    if not metrics:
        _fail(f"{run} logged no accuracy, reward or held-out metric: name one with --metric.")
    logged = {key for entry in history for key in entry}
    for key in metrics:
        if key not in logged:
            candidates = sorted(k for k in logged if "reward" in k or k.startswith(("eval_", "held_out/")))
            _fail(f"{run} never logged {key!r}: give --metric one of its logged keys, e.g. {', '.join(candidates)}.")
    logs = window or auto_window(history)
    analyses = [analyse(history, key, logs, prefix, min_r2, metric_max) for key in metrics]
    for analysis in analyses:
        typer.echo(format_law(analysis, prefix, min_r2, metric_max))
    if out is not None:
        plot_law(analyses, out, label=run.stem if run.is_file() else run.name)
        typer.echo(f"wrote {out}")


def format_law(analysis: dict, prefix: float, min_r2: float, metric_max: float | None) -> str:
    fit, hs = analysis["fit"], analysis["entropy"]
    head = f"{analysis['metric']}: {fit.n} points (windows of {analysis['window']} entropy logs)"
    if not fit.ok:
        return f"{head}\n  no fit: {fit.reason}"
    lines = [
        f"{head}, H {min(hs):.3f} to {max(hs):.3f}",
        f"  fit: R = -{fit.a:.3f}*exp(H) + {fit.b:.3f}   R² {fit.r2:.3f}   RMSE {fit.rmse:.4f}",
    ]
    verdict = analysis["verdict"]
    if verdict == "ok":
        lines.append(
            f"  ceiling {fit.ceiling:.2f} (R at H = 0); headroom {analysis['headroom']:+.3f} over the last point"
        )
    elif verdict == "ceiling_above_max":
        lines.append(
            f"  no ceiling: b - a = {fit.ceiling:.2f} is above the metric's maximum {metric_max:g}, so the run is not "
            "entropy-bound within the entropies it covered (ceiling above the metric's maximum)"
        )
    else:
        lines.append(f"  no ceiling: poor fit (R² < {min_r2:g}, or a <= 0: R does not rise as entropy falls)")
    forecast = analysis["forecast"]
    if forecast["predicted"] and forecast["fit"]["reason"] is None:
        lines.append(
            f"  fitted on the first {prefix:.0%} ({forecast['fitted']} points, at least 4), RMSE on the other "
            f"{forecast['predicted']}: law {forecast['rmse_law']:.4f}, last value carried forward "
            f"{forecast['rmse_last_value']:.4f}, straight line in H {forecast['rmse_linear']:.4f}"
        )
    else:
        lines.append(f"  fitted on the first {prefix:.0%}: too few points to fit and predict")
    return "\n".join(lines)


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="Hub id, local path or alias (e.g. qwen2.5-math-1.5b).")],
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter folder, evaluated on top of --model.")] = None,
    benchmarks: Annotated[
        str, typer.Option(help="Comma-separated: aime24, amc23, math500, minerva, olympiadbench.")
    ] = "aime24,amc23,math500,minerva,olympiadbench",
    data: Annotated[
        Path | None, typer.Option(help="A local save_to_disk folder with the benchmarks (default: the Hub).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem; pass@1 is their mean.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.1,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 3000,
    batch_size: Annotated[int, typer.Option(min=1, help="Completions per generate call (transformers).")] = 16,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N problems of each benchmark.")] = None,
    template: Annotated[str, typer.Option(help="'chat' (system + user messages) or 'plain' (base models).")] = "chat",
    output: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("eval_results.json"),
    backend: Annotated[str, typer.Option(help="auto (vLLM with a GPU, else transformers), vllm, transformers.")] = (
        "auto"
    ),
    seed: int = 0,
) -> None:
    """pass@1 and pass@k on AIME24 / AMC23 / MATH500 / Minerva / OlympiadBench, as a table and a JSON file."""
    from edge_trl.data import DatasetError, check_template
    from edge_trl.evaluation import evaluate, format_table, parse_benchmarks, write_result
    from edge_trl.models import resolve_model

    try:
        names = parse_benchmarks(benchmarks)
        model_id = resolve_model(model)
        if adapter is not None and not (adapter / "adapter_config.json").exists():
            _fail(f"--adapter {adapter}: no adapter_config.json there; point to a saved LoRA adapter folder.")
        if data is not None and not data.exists():
            _fail(f"--data {data}: no such folder.")
        if backend not in ("auto", "vllm", "transformers"):
            _fail(f"--backend {backend!r}: use auto, vllm or transformers.")
        check_template(template)
        result = evaluate(
            model_id, names, adapter=str(adapter) if adapter else None, data=data, samples=samples,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
            limit=limit, template=template, seed=seed, backend=backend,
        )  # fmt: skip
    except (ValueError, DatasetError, OSError) as error:
        _fail(str(error))
    typer.echo(format_table(result))
    settings = result["settings"]
    typer.echo(f"{settings['problems_per_second']:.3f} problems/s with {settings['backend']}; results: {output}")
    write_result(result, output)


@app.callback()
def _root() -> None:
    """edge-trl command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
