"""Entry point of the `edge-trl` command.

The full `train` command (accelerate launch, DeepSpeed/FSDP configs, LoRA, Hub push) is tracked in its own issue; for
now the app reports versions so users can paste them into bug reports.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

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


@app.callback()
def _root() -> None:
    """edge-trl command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
