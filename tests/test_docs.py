"""The docs site builds in strict mode (a broken link or anchor, a missing page or snippet, or an API reference that
does not resolve fails it), has every page, and its flag reference covers every `EdgeGRPOConfig` field."""

from __future__ import annotations

import dataclasses
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# One page per topic of the docs; the nav may hold more.
PAGES = [
    "index.md", "quickstart.md", "cli.md", "cli-reference.md", "methods/eda.md", "methods/gec.md", "methods/cov.md",
    "methods/dynamic-sampling.md", "methods/cov-scope.md", "methods/entropy-law.md", "recipes.md", "distributed.md",
    "vllm.md", "resume.md", "data.md", "benchmarks/index.md", "api.md", "notebooks.md", "layout.md",
    "guides/own-data-and-reward.md",
]  # fmt: skip


def nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def page_html(site: Path, page: str) -> str:
    return (site / re.sub(r"(index)?\.md$", "", page) / "index.html").read_text(encoding="utf-8")


def test_every_page_is_in_the_nav_and_built(site):
    nav = nav_pages(yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"])
    assert set(PAGES) <= set(nav), set(PAGES) - set(nav)
    for page in nav:
        text = page_html(site, page)
        assert "<h1" in text, page
    # the API reference rendered the docstrings (mkdocstrings), the benchmarks page its plots
    api = page_html(site, "api.md")
    assert 'id="edge_trl.EdgeGRPOTrainer"' in api and 'id="edge_trl.core_algos.entropy_driven_advantages"' in api
    bench = page_html(site, "benchmarks/index.md")
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (REPO_ROOT / "benchmarks" / "README.md").read_text()):
        assert f'src="{image}"' in bench and (site / "benchmarks" / image).is_file(), image
        assert f'<a class="zoom" href="{image}"' in bench, f"{image}: not linked to its full-size file"
    # a list right under a line of text (GitHub's Markdown) is a list on the site too, not literal dashes
    assert "<p>Reading it:</p>\n<ul>" in bench
    literal = [p[:60] for p in re.findall(r"<p>(.*?)</p>", bench, flags=re.S) if re.search(r"\n[-*] ", p)]
    assert not literal, literal


def flag_blocks(reference: str) -> dict[str, str]:
    """Each flag's block of the flag reference, by field name."""
    starts = list(re.finditer(r'<div class="flag" id="(\w+)">', reference))
    return {m.group(1): reference[m.end() : (starts[i + 1].start() if i + 1 < len(starts) else len(reference))]
            for i, m in enumerate(starts)}  # fmt: skip


def plain(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_flag_reference_covers_every_config_field(site):
    from edge_trl.cli.train_command import option_fields
    from edge_trl.config import EdgeGRPOConfig

    reference = page_html(site, "cli-reference.md")
    blocks = flag_blocks(reference)
    fields = [field.name for field in dataclasses.fields(EdgeGRPOConfig) if field.init]
    assert len(fields) > 200
    missing = [name for name in fields if name not in blocks or "--" + name.replace("_", "-") not in blocks[name]]
    assert not missing, f"not in the flag reference: {missing}"
    # each flag shows its field name as text (searchable) and its help, rendered as Markdown
    for config_field in option_fields():
        block = blocks[config_field.name]
        assert f'<span class="flag-field">{config_field.name}</span>' in block, config_field.name
        words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", config_field.help).replace("`", "")
        assert "".join(words.split())[:30] in "".join(plain(block).split()), config_field.name
    # TRL's Markdown links are links and its code spans code, not raw syntax
    assert "](http" not in plain(reference) and "`" not in plain(reference)
    assert '<a href="https://' in blocks["loss_type"] and "<code" in blocks["loss_type"]
    # topics: the edge-trl methods first, then generation, optimisation, vLLM, logging and saving, the rest
    headings = re.findall(r"<h2 id=\"([\w-]+)\"", reference)
    assert (
        headings.index("edge-trl-methods")
        < headings.index("generation")
        < headings.index("optimisation-loss-optimizer-schedule-precision")
        < headings.index("vllm-rollouts")
        < headings.index("logging-saving-evaluation-and-the-hub")
        < headings.index("the-rest-of-trl-and-transformers")
    )


def test_flag_reference_is_found_by_field_name(site):
    import json

    index = json.loads((site / "search" / "search_index.json").read_text())
    found = [
        doc["location"] for doc in index["docs"] if "kl_cov_ratio" in doc["text"] or "kl_cov_ratio" in doc["title"]
    ]
    assert any(location.startswith("cli-reference/") for location in found), found


def shown_defaults(block: str) -> dict[str, str]:
    """The defaults a flag's block shows, by case label: ``Default: v`` (every case) or one line per value."""
    end = "</ul>" if '<div class="flag-default">' in block else "</p>"
    default = re.search(rf'class="flag-default"[^>]*>(.*?){end}', block, flags=re.S).group(1)
    items = re.findall(r"<li>(.*?)</li>", default, flags=re.S)
    if not items:
        return {"*": plain(default).removeprefix("Default:").strip()}
    shown = {}
    for item in items:
        value, labels = re.match(r"\s*(<code[^>]*>.*?</code>):(.*)", item, flags=re.S).groups()
        for label in plain(labels).split("; "):
            shown[label] = plain(value)
    return shown


@pytest.mark.parametrize("case_index", [0, 1, 2, 3])
def test_flag_reference_defaults_match_the_dry_run(site, case_index, monkeypatch):
    """The default the page shows for each main case is what ``edge-trl train --dry-run`` resolves for it (the GPU
    cases with the GPU count set, as on a GPU machine)."""
    import yaml
    from typer.testing import CliRunner

    from edge_trl import launch
    from edge_trl.cli.flag_reference import MAIN_CASES, value_markdown
    from edge_trl.cli.main import app
    from edge_trl.cli.train_command import option_fields

    case = MAIN_CASES[case_index]
    monkeypatch.setattr(launch, "gpu_count", lambda precise=False: case.gpus)
    result = CliRunner().invoke(app, ["train", *case.args, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accelerate launch"))
    resolved = yaml.safe_load("\n".join(lines[start + 1 :]))
    settings = {**resolved.pop("trainer"), **resolved}
    blocks = flag_blocks(page_html(site, "cli-reference.md"))
    label = plain(case.label.replace("`", ""))
    fields = {f.name: f for f in option_fields()}
    checked = 0
    for name in fields:
        # transformers 5 reads gradient checkpointing from activation_checkpointing, where the dry run writes it
        key = "activation_checkpointing" if name == "gradient_checkpointing" else name
        if name in ("output_dir", "model", "recipe") or key not in settings:
            continue  # paths depend on the working directory; fields the run does not set keep their default
        shown = shown_defaults(blocks[name])
        expected = value_markdown(settings[key]).strip("`")
        assert shown.get(label, shown.get("*")) == expected, (name, case.label, shown, expected)
        checked += 1
    assert checked >= 15
    # for the Hub model the reference shows EDGE-GRPO's settings, not the dataclass defaults
    if case_index == 2:
        assert (settings["method"], settings["eda"], settings["gec"]) == ("edge", True, True)
        assert (settings["temperature"], settings["loss_type"]) == (0.6, "grpo")


def test_readme_links_resolve():
    """README.md is not part of the site, so its relative links are checked here."""
    readme = (REPO_ROOT / "README.md").read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in link]
    assert len(links) >= 15
    missing = [link for link in links if link and not (REPO_ROOT / link).exists()]
    assert not missing, missing
