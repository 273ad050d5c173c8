"""Model aliases: the short names the CLI accepts, in one place."""

from __future__ import annotations

import difflib
from pathlib import Path

MODEL_ALIASES: dict[str, str] = {
    "qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "qwen2.5-math-7b": "Qwen/Qwen2.5-Math-7B",
    "qwen2.5-math-1.5b-instruct": "Qwen/Qwen2.5-Math-1.5B-Instruct",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
}


def resolve_model(name: str) -> str:
    """A local path, a Hub id (``org/name``) or an alias, as something ``from_pretrained`` loads.

    Raises ``ValueError`` with a "did you mean" suggestion for an unknown alias.
    """
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    key = name.strip().lower()
    if key in MODEL_ALIASES:
        return MODEL_ALIASES[key]
    if "/" in name and not name.startswith((".", "/", "~")):
        return name  # a Hub id
    suggestions = difflib.get_close_matches(key, list(MODEL_ALIASES), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    raise ValueError(
        f"Unknown model {name!r}: not a local path, a Hub id (org/name) or an alias.{hint} "
        f"Aliases: {', '.join(MODEL_ALIASES)}."
    )
