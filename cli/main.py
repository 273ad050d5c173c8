"""Entry point of the `edge-trl` command.

`env` reports versions for bug reports; `eval` scores a model on the math benchmarks. The `train` command
(accelerate launch, DeepSpeed/FSDP configs, LoRA, Hub push) is tracked in its own issue.
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
    from edge_trl.data import DatasetError
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
        if template not in ("chat", "plain"):
            _fail(f"--template {template!r}: use chat or plain.")
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
