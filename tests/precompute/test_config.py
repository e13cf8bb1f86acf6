from __future__ import annotations

from pathlib import Path

import pytest

from precompute.config import ConfigError, load_config
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG

GRID = """
[model]
path = "model"
[space]
type = "grid"
[[space.feature]]
name = "a"
values = ["x", "y"]
[[space.feature]]
name = "b"
start = 1
stop = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "precompute.toml"
    path.write_text(text)
    return path


def test_example_config_loads_with_paths_relative_to_the_file() -> None:
    config = load_config(EXAMPLE_CONFIG, env={})
    assert config.model.path == EXAMPLE / "model"
    assert config.store.url == f"sqlite:///{EXAMPLE.parents[1] / 'var' / 'babyweight.db'}"
    assert config.run.actors is None
    assert config.serve.port == 8000


def test_environment_overrides_the_store_url() -> None:
    config = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": "redis://127.0.0.1:6390/2"})
    assert config.store.url == "redis://127.0.0.1:6390/2"


def test_defaults_and_default_key_template(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GRID), env={})
    assert config.space.template.text == "{a}:{b}"  # type: ignore[union-attr]
    assert config.space.size == 6  # type: ignore[union-attr]
    assert config.store.url == f"sqlite:///{tmp_path}/precompute.db"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[model]\n", "[model]\nsignatur = 'x'\n"),
            r"\[model\] signatur: unknown field. Fix: did you mean `signature`",
        ),
        (('path = "model"', "path = 3"), r"\[model\] path: expected a string, got 3. Fix: write e.g."),
        (('type = "grid"', 'type = "cube"'), r"\[space\] type: 'cube' is not one of"),
        (("stop = 3", "stop = 0"), r"need start <= stop"),
        (('values = ["x", "y"]', 'values = ["x:1", "y"]'), r"contains the key separator ':'"),
        (("[space]\n", '[space]\nkey = "{a}-{c}"\n'), r"\[space\] key: the template names"),
        (("[model]\n", "[run]\nactors = -1\n[model]\n"), r"\[run\] actors: must be positive"),
        (("[model]\n", '[run]\ndevice = "tpu"\n[model]\n'), r"\[run\] device: 'tpu' is not one of"),
        (("[model]\n", '[store]\nurl = "nowhere"\n[model]\n'), r"\[store\] url: store URL 'nowhere' has no scheme"),
        (
            ("[model]\n", "[serve]\nwrite_back_ttl_seconds = 60\n[model]\n"),
            r"\[serve\] write_back_ttl_seconds: set, but nothing is written back. Fix: add `write_back = true`",
        ),
        (
            ("[model]\n", "[serve]\nwrite_back = true\nwrite_back_ttl_seconds = 0\n[model]\n"),
            r"\[serve\] write_back_ttl_seconds: must be positive",
        ),
    ],
)
def test_bad_config_names_the_field_and_the_fix(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, GRID.replace(*change, 1)), env={})


def test_missing_sections_and_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config model: is required. Fix: add `model = "):
        load_config(write(tmp_path, "[space]\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"), env={})


def test_table_space(tmp_path: Path) -> None:
    text = '[model]\npath = "m"\n[space]\ntype = "table"\npath = "users.csv"\nkey_column = "id"\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.space.format == "csv"  # type: ignore[union-attr]
    assert config.space.paths == (str(tmp_path / "users.csv"),)  # type: ignore[union-attr]
