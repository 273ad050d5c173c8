"""MkDocs hooks: the pages generated at build time (mkdocs.yml `hooks:`).

- `cli-reference.md`: the flag reference of `edge-trl train`, from the schema the command itself is built from, with
  the defaults the command resolves (`edge_trl.cli.flag_reference`), so it cannot drift from the CLI.
- `benchmarks/index.md`: benchmarks/README.md, the one home of the benchmark results, with the files it shows or links
  to under benchmarks/ (plots, raw results): its relative links stay valid, since the page sits where the README does
  relative to `results/`. A section appended to benchmarks/README.md needs no edit here. On the site each plot links
  to its full-size file (click to zoom), and a list written right under a line of text (GitHub renders it, Python
  Markdown needs a blank line) is given its blank line.
- `api.md`: the `<!-- edge-grpo-config-fields -->` marker becomes the table of `EdgeGRPOConfig`'s own fields (type,
  default, help), from the dataclass.
- every page: inline code breaks between its words, never inside one (`--eda` stays whole), and long code with spaces
  may wrap inside a table cell, so that a table's columns fit (`on_page_content`, docs/assets/extra.css).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
LINK = re.compile(r"\]\(([^)\s#]+)")  # the target of an image or a link
IMAGE = re.compile(r"(?<!\[)!\[([^\]]*)\]\(([^)\s]+)\)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")
CONFIG_FIELDS_MARKER = "<!-- edge-grpo-config-fields -->"
INLINE_CODE = re.compile(r"<code>([^<\n]+)</code>")  # inline code, plain text (a code block's code holds tags)


def on_files(files: Files, config) -> Files:
    from edge_trl.cli.flag_reference import flag_reference

    files.append(File.generated(config, "cli-reference.md", content=flag_reference()))
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "benchmarks/index.md", content=readme))
    for target in sorted(set(LINK.findall(readme))):
        source = (BENCHMARKS / target).resolve()
        if "://" not in target and source.is_file() and BENCHMARKS in source.parents and source.suffix != ".md":
            files.append(File.generated(config, f"benchmarks/{target}", abs_src_path=str(source)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "benchmarks/index.md":
        page.meta.setdefault("hide", ["navigation"])  # its wide tables take the navigation's width
        return for_the_site(markdown)
    if page.file.src_uri == "api.md":
        return markdown.replace(CONFIG_FIELDS_MARKER, config_fields_table())
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    """Inline code breaks between its words, never inside one: `--eda` or `Qwen/Qwen2.5-Math-1.5B` stay whole (short
    code without spaces gets the class `nobr`; in code with spaces each word is a `nobr` span). Long code with spaces
    (a default string, a command) gets the class `wrap`, so that it may wrap inside a table cell (extra.css)."""
    return INLINE_CODE.sub(_inline_code, html)


def _inline_code(match: re.Match) -> str:
    text = match.group(1)
    words = text.split(" ")
    if len(words) == 1:
        return f'<code class="nobr">{text}</code>' if len(text) <= 44 else match.group(0)
    spans = " ".join(f'<span class="nobr">{word}</span>' if 1 < len(word) <= 44 else word for word in words)
    return f'<code class="wrap">{spans}</code>' if len(text) > 26 else f"<code>{spans}</code>"


def for_the_site(markdown: str) -> str:
    """GitHub Markdown as Python Markdown renders it the same: lists after a text line get their blank line; each plot
    is a link to itself, so a click opens it full size."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if (not fenced and LIST_ITEM.match(line) and lines and lines[-1].strip()
                and not LIST_ITEM.match(lines[-1]) and not lines[-1].startswith((" ", "|", "#"))):  # fmt: skip
            lines.append("")
        if not fenced:
            line = IMAGE.sub(r'[![\1](\2)](\2){ .zoom title="open full size" }', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _type_name(hint: object) -> str:
    text = str(hint) if not isinstance(hint, type) else hint.__name__
    return re.sub(r"\btyping\.", "", text).replace("NoneType", "None")


def config_fields_table() -> str:
    """`EdgeGRPOConfig`'s own fields (the ones it adds to TRL's `GRPOConfig`), each with type, default and help."""
    from edge_trl.cli.flag_reference import help_markdown, value_markdown, wrappable
    from edge_trl.config import EdgeGRPOConfig
    from edge_trl.config_schema import config_fields

    hints = typing.get_type_hints(EdgeGRPOConfig)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    own = [f for f in config_fields(EdgeGRPOConfig) if f.owner == "EdgeGRPOConfig"]
    declared = {f.name: f for f in dataclasses.fields(EdgeGRPOConfig)}
    for field in own:
        help_text = help_markdown(field.help)
        default = wrappable(value_markdown(field.default)) if declared[field.name].default is not dataclasses.MISSING or (
            declared[field.name].default_factory is not dataclasses.MISSING) else "required"  # fmt: skip
        rows.append(
            f'| <span id="EdgeGRPOConfig.{field.name}"></span>[`{field.name}`](cli-reference.md#{field.name}) '
            f"| `{_type_name(hints[field.name])}` | {default} | {help_text} |"
        )
    return "\n".join(rows)
