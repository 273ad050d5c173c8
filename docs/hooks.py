"""MkDocs hooks: the pages generated at build time (mkdocs.yml `hooks:`).

- `cli-reference.md`: the flag reference of `edge-trl train`, from the schema the command itself is built from
  (`edge_trl.cli.train_command.flag_reference`), so it cannot drift from the CLI.
- `benchmarks/index.md`: benchmarks/README.md as it is, the one home of the benchmark results, with the images it shows
  (its relative image paths stay valid, since the page sits where the README does relative to `results/`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def on_files(files: Files, config) -> Files:
    from edge_trl.cli.train_command import flag_reference

    files.append(File.generated(config, "cli-reference.md", content=flag_reference()))
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "benchmarks/index.md", content=readme))
    for image in sorted(set(IMAGE.findall(readme))):
        source = (BENCHMARKS / image).resolve()
        if source.is_file() and BENCHMARKS in source.parents:
            files.append(File.generated(config, f"benchmarks/{image}", abs_src_path=str(source)))
    return files
