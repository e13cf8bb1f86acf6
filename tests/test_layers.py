"""Dependencies point one way: store <- adapters; core <- batch side, API; the CLI on top (the API lazily).

Read from the source with ``ast`` (module-level imports only: an import inside a function is lazy, which
is how the CLI reaches the API and how optional SDKs stay optional).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "precompute"

CORE = {
    "config",
    "config_errors",
    "settings",
    "keys",
    "space",
    "model",
    "values",
    "drift",
    "served",
}  # used by batch side and API
BATCH = {"run", "scoring", "sink", "plan", "cluster", "shipping", "report", "misses", "refresh", "sources"}
# What each layer may import from the project, by first name under precompute.
ALLOWED: dict[str, set[str]] = {
    "store": {"store"},
    "adapters": {"store", "adapters"},
    **{name: CORE | {"store"} for name in CORE},
    **{name: CORE | BATCH | {"store", "adapters"} for name in BATCH},
    "api": CORE | {"store", "adapters", "api"},
    "cli": CORE | BATCH | {"store", "adapters"},
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _module_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue  # annotations only
    return names


# The linked folders are walked where they are (Path.rglob does not follow the links).
SOURCES = sorted(
    PACKAGE / folder / p.relative_to(ROOT / folder)
    for folder in ("store", "adapters", "api")
    for p in (ROOT / folder).rglob("*.py")
) + sorted(p for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_imports_point_one_way(path: Path) -> None:
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for name in _module_level_imports(path):
        if name.startswith("precompute."):
            target = name.split(".")[1]
            assert target in allowed, f"{path.relative_to(ROOT)} imports {name}: {layer} may use {sorted(allowed)}"
        elif layer == "store":
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names, f"store/ uses the standard library only, not {name}"


def test_the_package_is_one_import_name() -> None:
    # store/, api/ and adapters/ sit at the top of the repository and are importable only as precompute.*
    for folder in ("store", "api", "adapters"):
        link = PACKAGE / folder
        assert link.is_symlink()
        assert link.resolve() == (ROOT / folder).resolve()
