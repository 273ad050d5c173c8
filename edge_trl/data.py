"""Dataset helpers shared by the trainer, the CLI and evaluation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def normalize_answer(answer: Any) -> str | None:
    """A reference answer as a clean string, whatever type the dataset stored it in.

    Competition datasets disagree: AIME/MATH store strings, AMC floats (``142.0``), Minerva and OlympiadBench
    one-element lists (``['9.6\\n']``). Integral floats lose their ``.0``; one-element lists and tuples are unwrapped;
    surrounding whitespace is stripped. None, NaN, empty strings and empty lists give None (no answer).
    """
    if answer is None:
        return None
    if isinstance(answer, (list, tuple)):
        if len(answer) == 0:
            return None
        if len(answer) == 1:
            return normalize_answer(answer[0])
        parts = [normalize_answer(a) for a in answer]
        return ", ".join(p for p in parts if p is not None) or None
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, float):
        if math.isnan(answer):
            return None
        if answer.is_integer():
            return str(int(answer))
        return repr(answer)
    text = str(answer).strip()
    return text or None


# --------------------------------------------------------------------------------------------------------------------
# Loading and preparing math datasets
# --------------------------------------------------------------------------------------------------------------------

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_COLUMNS = ("prompt", "problem", "question", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "gold", "target", "expected_answer")
SOLUTION_COLUMNS = ("solution", "reasoning", "rationale")
PLAIN_TEMPLATE = "{system}\n\nQuestion: {problem}\nAnswer:"
# Prompt templates: "chat" (system + user messages, for chat models) or "plain" (one string, for base models).
TEMPLATES = ("chat", "plain")


def check_template(template: str) -> str:
    """``template`` if it is one of `TEMPLATES`; the one check the CLI, training and evaluation share."""
    if template not in TEMPLATES:
        raise DatasetError(f"template={template!r} is not supported: use 'chat' or 'plain' (base models).")
    return template


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message says what to change."""


# Datasets shipped inside the package, by the name `--dataset` takes: file in `edge_trl/assets/datasets/` (whose
# PROVENANCE.md says where each comes from and under which terms). They load offline.
SHIPPED_DATASETS: dict[str, str] = {
    # EDGE-GRPO's training set (train_grpo.sh: ./train_data/deepscaler_hard-1k.json), 1,000 DeepScaleR problems.
    "deepscaler-hard-1k": "deepscaler_hard_1k.json.gz",
}


def shipped_dataset_path(name: str) -> Path | None:
    """The file of a shipped dataset named ``name`` (see `SHIPPED_DATASETS`), or None for any other name."""
    filename = SHIPPED_DATASETS.get(str(name).strip().lower())
    if filename is None:
        return None
    from importlib import resources

    return Path(str(resources.files("edge_trl") / "assets" / "datasets" / filename))


def load_shipped_dataset(name: str, split: str = "train") -> Any:
    """A shipped dataset (`SHIPPED_DATASETS`) as a ``datasets.Dataset``, read from the package: no network, no cache."""
    import gzip
    import json

    import datasets

    path = shipped_dataset_path(name)
    if path is None:
        raise DatasetError(f"{name!r} is not a shipped dataset; the shipped ones are {', '.join(SHIPPED_DATASETS)}.")
    if split != "train":
        raise DatasetError(f"The shipped dataset {name} has one split, 'train', not {split!r}: drop the split option.")
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return datasets.Dataset.from_list(json.load(file))


def load_any_dataset(source: str, split: str = "train") -> Any:
    """A ``datasets.Dataset`` from a shipped dataset's name (`SHIPPED_DATASETS`, e.g. ``deepscaler-hard-1k``), a local
    JSON/JSONL/Parquet file, a ``save_to_disk`` folder, or a Hub dataset id.

    A local file or folder of the same name as a shipped dataset wins over it. For a folder holding a ``DatasetDict``
    (several splits) ``split`` picks one; the error lists the splits.
    """
    import datasets

    path = Path(source).expanduser()
    if not path.exists() and shipped_dataset_path(source) is not None:
        return load_shipped_dataset(source, split=split)
    if path.is_file():
        suffix = path.suffix.lower()
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
        if builder is None:
            raise DatasetError(f"{source}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv.")
        if split != "train":
            raise DatasetError(
                f"{source} is one file, so it has one split, 'train', not {split!r}: drop the split option."
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        if not any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise DatasetError(
                f"{source} is a folder but not a `datasets.save_to_disk` folder (no dataset_info.json or "
                "dataset_dict.json): point to the folder written by save_to_disk, or to a JSON/JSONL/Parquet file."
            )
        # In memory: `map` on a dataset backed by the folder's files writes its cache-*.arrow files next to them,
        # into the user's data folder. Math datasets are small (tens of MB).
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetError(f"{source} has splits {list(loaded)}, not {split!r}: choose one of them.")
            return loaded[split]
        return loaded
    if source.startswith((".", "/", "~")) or source.endswith((".json", ".jsonl", ".parquet", ".csv")):
        raise DatasetError(f"{source}: no such file or folder.")
    return datasets.load_dataset(source, split=split)  # a Hub dataset id


def _pick(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, required: bool
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(f"The dataset has no {what} column {wanted!r}; its columns are {list(columns)}.")
        return wanted
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise DatasetError(
            f"Cannot find the {what} column: the dataset has columns {list(columns)}, none of "
            f"{list(candidates)}. Name it explicitly (the `{what}_column` option)."
        )
    return found


ANSWER_TYPES = (str, int, float, bool, list, tuple, type(None))  # what normalize_answer reads


def _rows(indices: Sequence[int], shown: int = 10) -> str:
    listed = ", ".join(map(str, indices[:shown]))
    return listed + (f", ... ({len(indices)} in all)" if len(indices) > shown else "")


def empty_rows(dataset: Any, prompt_col: str, answer_col: str | None) -> list[int]:
    """The rows with an empty or None problem or answer, which `prepare_math_dataset` drops. Answers of a type
    `normalize_answer` cannot read (a dict, bytes, a nested list) are an error naming the rows: most likely the wrong
    column."""
    empty = {i for i, value in enumerate(dataset[prompt_col]) if value is None or not str(value).strip()}
    if answer_col is not None:
        answers = dataset[answer_col]
        wrong = [i for i, value in enumerate(answers) if not _readable_answer(value)]
        if wrong:
            kinds = sorted({type(answers[i]).__name__ for i in wrong})
            raise DatasetError(
                f"The {answer_col!r} column holds answers of type {', '.join(kinds)} in rows {_rows(wrong)}: an answer "
                "must be a string, a number or a list of them. Fix those rows, or name the right column "
                "(answer_column)."
            )
        empty.update(i for i, value in enumerate(answers) if normalize_answer(value) is None)
    return sorted(empty)


def _readable_answer(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, (str, int, float, bool)) or item is None for item in value)
    return isinstance(value, ANSWER_TYPES)


def prepare_math_dataset(
    dataset: Any,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    solution_column: str | None = None,
    system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT,
    template: str = "chat",
    require_answer: bool = True,
) -> Any:
    """Map a math dataset to the columns the trainer and the rewards use: ``prompt``, ``answer``, ``solution``.

    Columns are found by common names (``problem``/``question``/``prompt``…, ``answer``/``final_answer``…,
    ``solution``…) unless named. ``template="chat"`` builds a conversational prompt (system + user messages, the way
    Qwen2.5-Math is trained); ``"plain"`` a single string for base models without a chat template. Answers are
    normalised to strings (``142.0`` → ``"142"``, ``['9.6']`` → ``"9.6"``). Rows with an empty or None problem or
    answer are dropped, with a warning that counts and names them; empty datasets (also after that), missing columns
    and answers of a type that is not a string, number or list are errors that name the rows and column.
    """
    check_template(template)
    if len(dataset) == 0:
        raise DatasetError("The dataset is empty: it has no rows to train or evaluate on.")
    columns = list(dataset.column_names)
    prompt_col = _pick(columns, prompt_column, PROMPT_COLUMNS, "prompt", required=True)
    answer_col = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", required=require_answer)
    solution_col = _pick(columns, solution_column, SOLUTION_COLUMNS, "solution", required=False)

    empty = empty_rows(dataset, prompt_col, answer_col)
    if empty:
        if len(empty) == len(dataset):
            raise DatasetError(
                f"No row is left after dropping the rows with an empty {prompt_col!r} or {answer_col!r}: every row "
                "is empty there. Check the column names (prompt_column / answer_column)."
            )
        logger.warning(
            "Dropping %d of %d rows with an empty or missing %s (rows %s); training on the other %d.",
            len(empty), len(dataset), " or ".join(repr(c) for c in (prompt_col, answer_col) if c), _rows(empty),
            len(dataset) - len(empty),
        )  # fmt: skip
        dropped = set(empty)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        problem = row[prompt_col]
        if isinstance(problem, list):  # already conversational
            prompt: Any = problem
        elif template == "chat":
            prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": str(problem)}
            ]
        else:
            prompt = PLAIN_TEMPLATE.format(system=system_prompt or "", problem=problem).lstrip()
        out = {"_edge_prompt": prompt}
        if answer_col is not None:
            out["_edge_answer"] = normalize_answer(row[answer_col])
        solution = row.get(solution_col) if solution_col else None
        out["_edge_solution"] = solution if isinstance(solution, str) and solution.strip() else None
        return out

    # New columns under temporary names: `map` would cast a replaced column back to its old type (142 -> int).
    prepared = dataset.map(convert, desc="Preparing prompts")
    finals = [c for c in ("prompt", "answer", "solution") if f"_edge_{c}" in prepared.column_names]
    prepared = prepared.remove_columns([c for c in finals if c in columns])
    return prepared.rename_columns({f"_edge_{c}": c for c in finals})


def prompt_token_lengths(prompts: Sequence[Any], tokenizer: Any) -> list[int]:
    """The length in tokens of each prompt as the model sees it: a conversational prompt (a list of messages) through
    the tokenizer's chat template with the generation prompt, as TRL 1.16 renders it; a plain prompt as it is."""
    lengths = []
    for prompt in prompts:
        if isinstance(prompt, list):
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            lengths.append(len(tokenizer(str(prompt))["input_ids"]))
    return lengths


def check_prompt_lengths(dataset: Any, tokenizer: Any, max_prompt_length: int, drop: bool = False) -> Any:
    """``dataset`` (prepared: a ``prompt`` column) without prompts longer than ``max_prompt_length`` tokens.

    TRL 1.16 neither truncates prompts nor has a ``max_prompt_length``: a prompt longer than the model's context fails
    or is silently cut in generation. Such rows are an error naming them, or, with ``drop``, dropped with a warning
    that counts and names them (an error if none is left).
    """
    lengths = prompt_token_lengths(dataset["prompt"], tokenizer)
    long = [i for i, length in enumerate(lengths) if length > max_prompt_length]
    if not long:
        return dataset
    where = f"{len(long)} of {len(dataset)} prompts are longer than max_prompt_length={max_prompt_length} tokens "
    where += f"(rows {_rows(long)} of the prepared dataset; the longest has {max(lengths)})"
    if not drop:
        raise DatasetError(f"{where}: raise --max-prompt-length, or pass --drop-long-prompts to train without them.")
    if len(long) == len(dataset):
        raise DatasetError(f"{where}: no row is left to train on; raise --max-prompt-length.")
    logger.warning("%s: dropping them (--drop-long-prompts); training on the other %d.", where,
                   len(dataset) - len(long))  # fmt: skip
    dropped = set(long)
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])
