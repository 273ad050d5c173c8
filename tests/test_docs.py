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
# One page per topic of the docs (issue 20); the nav may hold more.
PAGES = [
    "index.md", "quickstart.md", "cli.md", "cli-reference.md", "methods/eda.md", "methods/gec.md", "methods/cov.md",
    "methods/dynamic-sampling.md", "methods/cov-scope.md", "methods/entropy-law.md", "recipes.md", "distributed.md",
    "vllm.md", "resume.md", "data.md", "benchmarks/index.md", "api.md", "notebooks.md", "layout.md",
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


def test_flag_reference_covers_every_config_field(site):
    from edge_trl.cli.train_command import option_fields
    from edge_trl.config import EdgeGRPOConfig

    reference = html.unescape(page_html(site, "cli-reference.md"))
    fields = [field.name for field in dataclasses.fields(EdgeGRPOConfig) if field.init]
    assert len(fields) > 200
    missing = [
        name for name in fields if f'id="{name}"' not in reference or "--" + name.replace("_", "-") not in reference
    ]
    assert not missing, f"not in the flag reference: {missing}"
    # each row holds its field's help: a line break or a | in a cell would split the row
    rows = dict(re.findall(r'<tr>\s*<td><span id="(\w+)"></span>(.*?)</tr>', reference, flags=re.S))
    broken = [f.name for f in option_fields() if f.help[:40] not in rows.get(f.name, "")]
    assert not broken, broken
    # help text and defaults come through, escaped into plain text
    assert "Entropy-Driven Advantage" in reference and "<code>--cov-mode</code>" in reference


def test_readme_links_resolve():
    """README.md is not part of the site, so its relative links are checked here."""
    readme = (REPO_ROOT / "README.md").read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in link]
    assert len(links) >= 15
    missing = [link for link in links if link and not (REPO_ROOT / link).exists()]
    assert not missing, missing
