"""Corrections to TRL's generated model card, which assumes a Hub base model and a Hub repository.

TRL's template (trl/templates/lm_model_card.md, TRL 1.16) writes ``[None](https://huggingface.co/None)`` when the
base model is a local folder, ``pipeline(model="None")`` when the run is not pushed, and a Hub dataset link for a
local data file. These functions name what was actually used instead.
"""

from __future__ import annotations

import os


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and "/" in str(name) and not os.path.exists(str(name)) and not str(name).startswith((".", "/"))


def base_model_reference(base_model: str | None) -> str:
    """A Markdown reference to the base model: a Hub link for a Hub id, the path in code format otherwise."""
    if _is_hub_id(base_model):
        return f"[{base_model}](https://huggingface.co/{base_model})"
    return f"`{base_model}` (a local model)" if base_model else "an unnamed model"


def fix_model_card(text: str, base_model: str | None, model_location: str, dataset_name: str | None) -> str:
    """``text`` (TRL's card) with the base model named, the pipeline and the title pointed at ``model_location`` (the
    Hub repository or the output folder), and a local dataset named without a broken Hub link."""
    text = text.replace("[None](https://huggingface.co/None)", base_model_reference(base_model))
    text = text.replace('model="None"', f'model="{model_location}"')
    name = os.path.basename(str(model_location).rstrip("/"))
    text = text.replace("# Model Card for None\n", f"# Model Card for {name}\n")
    text = text.replace("\nmodel_name: None\n", f"\nmodel_name: {name}\n")
    if dataset_name and not _is_hub_id(dataset_name):
        from edge_trl.data import shipped_dataset_path

        where = "shipped with edge-trl" if shipped_dataset_path(dataset_name) else "local data"
        text = text.replace(
            f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})", f"`{dataset_name}` ({where})"
        )
    return text
