"""The README's exit-code table and the CLI's codes are the same list."""

from __future__ import annotations

import re
from pathlib import Path

from precompute import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_exit_code_the_cli_uses() -> None:
    section = README.read_text().split("## Scheduling and exit codes", 1)[1].split("\n## ", 1)[0]
    listed: set[int] = set()
    for cell in re.findall(r"^\| ([0-9, ]+) \|", section, re.M):
        listed |= {int(code) for code in cell.split(",")}
    assert listed == {int(code) for code in cli.Exit}
    documented = {int(code) for code in re.findall(r"^    (\d+)  ", cli.__doc__ or "", re.M)}
    assert documented | {130, 143} == listed  # the module docstring lists 130/143 on one line
