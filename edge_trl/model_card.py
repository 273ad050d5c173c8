"""The model card of a trained run: what a user sees on the Hub.

TRL's card (trl/templates/lm_model_card.md, TRL 1.16) is written for any GRPO run: its quick start asks a
time-machine question through `pipeline`, its metadata carries a ``licence: license`` line, and a local base model or
dataset appears as ``None`` or as its absolute path. `render_model_card` writes the card of *this* run instead: a math
problem in the prompt format the model was trained on, loading an adapter on its base model and merging it, the
method with its settings, the dataset and the final metrics, the method's papers next to GRPO's and TRL's, and only
public names (a Hub id, or a file's or folder's name, never a local path). TRL's own card still supplies the
experiment-tracker badges, the framework versions and its citations.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

EXAMPLE_PROBLEM = "Find the remainder when $2^{100}$ is divided by $7$."
EDGE_GRPO_CITATION = """@article{zhang2025edgegrpo,
  title   = {{EDGE-GRPO: Entropy-Driven GRPO with Guided Error Correction for Advantage Diversity}},
  author  = {Zhang, Xingjian and Wen, Siwei and Wu, Wenjun and Huang, Lei},
  journal = {arXiv preprint arXiv:2507.21848},
  year    = {2025}
}"""
ENTROPY_MECHANISM_CITATION = """@article{cui2025entropy,
  title   = {{The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models}},
  author  = {Cui, Ganqu and Zhang, Yuchen and Chen, Jiacheng and Yuan, Lifan and Wang, Zhi and Zuo, Yuxin and Li, Haozhan and Fan, Yuchen and Chen, Huayu and Chen, Weize and others},
  journal = {arXiv preprint arXiv:2505.22617},
  year    = {2025}
}"""


@dataclass(frozen=True)
class Paper:
    """A paper a method's card cites: a link in the card's first sentence, and its BibTeX under Citations."""

    title: str  # the link text
    url: str
    bibtex: str
    cite_as: str  # e.g. "EDGE-GRPO"


PAPERS: dict[str, Paper] = {
    "edge-grpo": Paper("EDGE-GRPO", "https://huggingface.co/papers/2507.21848", EDGE_GRPO_CITATION, "EDGE-GRPO"),
    "entropy-mechanism": Paper(
        "The Entropy Mechanism of RL for Reasoning LMs",
        "https://huggingface.co/papers/2505.22617",
        ENTROPY_MECHANISM_CITATION,
        "the Entropy Mechanism (Clip-Cov, KL-Cov)",
    ),
}
"""The papers of the built-in methods by key; a method's ``papers`` holds these keys or `Paper`s of its own."""


def is_hub_id(name: str | None) -> bool:
    """``name`` looks like a Hub repository id (``owner/name``) and is not a local path."""
    text = str(name or "")
    return (
        text.count("/") == 1
        and not os.path.exists(text)
        and not text.startswith((".", "/", "~"))
        and re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None
    )


def public_name(name: str | None) -> str | None:
    """What a public card may show of a model or dataset: a Hub id as it is, a local path by its last component
    (``/data/deepscaler_hard-1k.json`` -> ``deepscaler_hard-1k.json``), anything else (``embedded:addition``) as is."""
    if not name:
        return None
    text = str(name)
    if is_hub_id(text) or ("/" not in text and os.sep not in text):
        return text
    return os.path.basename(os.path.normpath(text)) or text


def base_model_reference(base_model: str | None) -> str:
    """A Markdown reference to the base model: a Hub link for a Hub id, the public name in code format otherwise."""
    if is_hub_id(base_model):
        return f"[{base_model}](https://huggingface.co/{base_model})"
    return f"`{public_name(base_model)}` (a local model)" if base_model else "an unnamed model"


def dataset_reference(dataset: str | None) -> str:
    """A Markdown reference to the dataset: a Hub link, a dataset shipped with edge-trl by its name, else local data."""
    from edge_trl.data import shipped_dataset_path

    if is_hub_id(dataset):
        return f"the [{dataset}](https://huggingface.co/datasets/{dataset}) dataset"
    if dataset and shipped_dataset_path(dataset):
        return f"`{dataset}` (shipped with edge-trl)"
    return f"`{public_name(dataset)}` (local data)" if dataset else "an unnamed dataset"


@dataclass
class CardRun:
    """What the card says about one run; `EdgeGRPOTrainer.create_model_card` fills it."""

    base_model: str | None
    model_id: str  # the Hub repository, or the output folder's name when the run is not pushed
    dataset: str | None
    method: str  # e.g. "EDGE-GRPO (EDA + GEC) + KL-Cov"
    method_flag: str | None = None  # the `--method` the run used, if any
    adapter: bool = False
    steps: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    prompt: Any = None  # one training prompt: a list of messages (chat template) or a string
    stop_tokens: list[str] = field(default_factory=list)  # end of turn, then EOS
    max_new_tokens: int = 1024
    papers: list[Any] = field(default_factory=list)  # keys of PAPERS ("edge-grpo", ...) or Paper objects
    tags: list[str] = field(default_factory=list)


def example_prompt(prompt: Any) -> tuple[str, Any]:
    """The training prompt's format around `EXAMPLE_PROBLEM`: ("chat", messages) or ("plain", text)."""
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        system = [dict(m) for m in prompt if m.get("role") == "system"]
        return "chat", [*system, {"role": "user", "content": EXAMPLE_PROBLEM}]
    if isinstance(prompt, str):
        match = re.fullmatch(r"(?s)(.*Question: ).*(\nAnswer:)", prompt)
        if match:  # edge-trl's plain template (edge_trl.data.PLAIN_TEMPLATE): the problem replaced
            return "plain", match.group(1) + EXAMPLE_PROBLEM + match.group(2)
        return "plain", prompt  # another format: one training prompt as it was
    return "chat", [{"role": "user", "content": EXAMPLE_PROBLEM}]


def quick_start(run: CardRun) -> str:
    """Python that loads the model (an adapter: on its base model, merged) and solves a problem in the trained format."""
    kind, prompt = example_prompt(run.prompt)
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if run.adapter:
        base = public_name(run.base_model) or "BASE_MODEL"
        note = "" if is_hub_id(run.base_model) else "  # the base model the adapter was trained on: a local folder"
        lines = [
            "from peft import PeftModel",
            *lines,
            "",
            f'base = AutoModelForCausalLM.from_pretrained({json.dumps(base)}, dtype="auto", device_map="auto"){note}',
            "# the LoRA adapter on its base model, merged into the weights (plain transformers from here on)",
            f"model = PeftModel.from_pretrained(base, {json.dumps(run.model_id)}).merge_and_unload()",
        ]
    else:
        lines += [
            "",
            f'model = AutoModelForCausalLM.from_pretrained({json.dumps(run.model_id)}, dtype="auto", device_map="auto")',
        ]
    lines.append(f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(run.model_id)})")
    lines.append("")
    if kind == "chat":
        lines.append("messages = [")
        lines += [f"    {json.dumps(message, ensure_ascii=False)}," for message in prompt]
        lines.append("]")
        lines.append("text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)")
    else:
        lines.append(f"text = {json.dumps(prompt, ensure_ascii=False)}")
    lines.append('inputs = tokenizer(text, return_tensors="pt").to(model.device)')
    stop = f", eos_token_id=tokenizer.convert_tokens_to_ids({json.dumps(run.stop_tokens)})" if run.stop_tokens else ""
    lines.append(f"output = model.generate(**inputs, max_new_tokens={run.max_new_tokens}, do_sample=False{stop})")
    lines.append('print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))')
    return "\n".join(lines)


def card_metadata(run: CardRun, trl_tags: list[str]) -> dict[str, Any]:
    """The card's YAML metadata: Hub ids only, no ``licence`` key (TRL's template writes a placeholder)."""
    data: dict[str, Any] = {}
    if is_hub_id(run.base_model):
        data["base_model"] = run.base_model
    if is_hub_id(run.dataset):
        data["datasets"] = [run.dataset]
    data["library_name"] = "peft" if run.adapter else "transformers"
    data["model_name"] = public_name(run.model_id)
    data["pipeline_tag"] = "text-generation"
    tags = [*trl_tags, "edge-trl", *run.tags, *(["lora"] if run.adapter else [])]
    data["tags"] = list(dict.fromkeys(tags))
    return data


def _section(text: str, heading: str) -> str:
    """The body of ``heading`` in TRL's card, up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    match = re.search(rf"(?ms)^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", text)
    return match.group(1).strip() if match else ""


def render_model_card(run: CardRun, trl_card: str) -> str:
    """The whole card (metadata and Markdown) of ``run``; ``trl_card`` is the card TRL wrote for the same run."""
    import yaml

    trl_metadata = yaml.safe_load(trl_card.split("---")[1]) if trl_card.startswith("---") else {}
    trl_tags = [t for t in (trl_metadata or {}).get("tags") or [] if isinstance(t, str)]
    # TRL's tracker badges and its "trained with GRPO, a method introduced in ..." line
    procedure = [line.strip() for line in _section(trl_card, "## Training procedure").splitlines() if line.strip()]
    versions = _section(trl_card, "### Framework versions")
    trl_citations = _section(trl_card, "## Citations")
    name = public_name(run.model_id)
    what = "A LoRA adapter for" if run.adapter else "A fine-tuned version of"
    method = f"{run.method}" + (f" (`edge-trl train --method {run.method_flag}`)" if run.method_flag else "")
    cited = [PAPERS[p] if isinstance(p, str) else p for p in run.papers]
    papers = [f"[{paper.title}]({paper.url})" for paper in cited]
    citations = [
        *(part for paper in cited for part in (f"Cite {paper.cite_as} as:", f"```bibtex\n{paper.bibtex}\n```")),
        trl_citations,
    ]
    body = [
        f"# Model Card for {name}",
        "",
        f"{what} {base_model_reference(run.base_model)}, trained on {dataset_reference(run.dataset)} with {method}"
        + (f", from {' and '.join(papers)}" if papers else "")
        + ", using edge-trl on [TRL](https://github.com/huggingface/trl).",
        "",
        "## Quick start",
        "",
        "A math problem in the prompt format the model was trained on:",
        "",
        "```python",
        quick_start(run),
        "```",
        "",
        *(["## Training procedure", "", *procedure, ""] if procedure else []),
        "## Trained with edge-trl",
        "",
        f"- Base model: {base_model_reference(run.base_model)}",
        f"- Method: {method}",
        f"- Dataset: {dataset_reference(run.dataset)}",
        f"- Steps: {run.steps}",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| `{k}` | {v} |" for k, v in run.settings.items()),
        "",
        "Final metrics (last logged value):",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| `{k}` | {v:.4g} |" for k, v in sorted(run.metrics.items())),
        "",
        "### Framework versions",
        "",
        versions,
        "",
        "## Citations",
        "",
        "\n\n".join(part for part in citations if part),
        "",
    ]
    metadata = yaml.safe_dump(card_metadata(run, trl_tags), sort_keys=False, allow_unicode=True)
    text = "\n".join(body)
    return f"---\n{metadata}---\n\n{re.sub(chr(10) + '{3,}', chr(10) * 2, text)}"
