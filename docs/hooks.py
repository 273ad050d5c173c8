"""MkDocs hooks: the pages generated at build time (mkdocs.yml `hooks:`).

- `cli-reference.md`: the flag reference of `edge-trl train`, from the schema the command itself is built from
  (`edge_trl.cli.train_command.flag_reference`), so it cannot drift from the CLI.
- `benchmarks/index.md`: benchmarks/README.md as it is, the one home of the benchmark results, with the files it shows
  or links to under benchmarks/ (plots, raw results): its relative links stay valid, since the page sits where the
  README does relative to `results/`. A section appended to benchmarks/README.md needs no edit here.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
LINK = re.compile(r"\]\(([^)\s#]+)")  # the target of an image or a link


def on_files(files: Files, config) -> Files:
    from edge_trl.cli.train_command import flag_reference

    files.append(File.generated(config, "cli-reference.md", content=flag_reference()))
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "benchmarks/index.md", content=readme))
    for target in sorted(set(LINK.findall(readme))):
        source = (BENCHMARKS / target).resolve()
        if "://" not in target and source.is_file() and BENCHMARKS in source.parents and source.suffix != ".md":
            files.append(File.generated(config, f"benchmarks/{target}", abs_src_path=str(source)))
    return files
