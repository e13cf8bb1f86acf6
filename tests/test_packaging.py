"""The wheel installs one import name, ``precompute``, with store/, api/ and adapters/ inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy (links kept as links), so the build's own folders never land in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("precompute", "store", "api", "adapters"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        timeout=300,
        cwd=source,
    )
    (wheel,) = tmp_path.glob("precompute-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"precompute", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in ("store/backend.py", "api/app.py", "adapters/__init__.py", "adapters/redis/__init__.py", "cli.py"):
        assert f"precompute/{module}" in names
    assert not [n for n in names if n.startswith("precompute/") and "/tests/" in n]
