from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from precompute.config import (
    ConfigError,
    MissesConfig,
    ModelConfig,
    RefreshConfig,
    RunConfig,
    ServeConfig,
    StoreConfig,
    VerifyConfig,
    load_config,
)
from precompute.settings import ConfigFile, document_schema
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
    assert config.store.url == f"sqlite:///{EXAMPLE / 'var' / 'babyweight.db'}"  # inside the example's folder
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
        (("[model]\n", "[verify]\nmax_drift = 0\n[model]\n"), r"\[verify\] max_drift: must be positive, got 0"),
        (
            ("[model]\n", "[verify]\nmax_changed_fraction = 1.5\n[model]\n"),
            r"\[verify\] max_changed_fraction: 1.5 is above the limit of 1.0. Fix: write e.g.",
        ),
        (
            ("[model]\n", "[verify]\nsample = 0\nmax_drift = 0.25\n[model]\n"),
            r"\[verify\] sample: is 0, so max_drift would have nothing to compare. Fix: `sample = 10000`, or remove",
        ),
        (("[model]\n", "[verify]\nmax_drfit = 1\n[model]\n"), r"\[verify\] max_drfit: unknown field. Fix: did you"),
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


def test_a_misspelled_section_is_one_problem_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GRID.replace("[model]\n", "[modle]\n", 1)), env={})
    assert str(info.value) == "config [modle]: unknown section ([model] is required). Fix: did you mean `[model]`?"
    with pytest.raises(ConfigError, match=r"config \[srve\]: unknown section. Fix: did you mean `\[serve\]`\?"):
        load_config(write(tmp_path, GRID + "[srve]\nport = 1\n"), env={})
    with pytest.raises(ConfigError, match=r"config \[logging\]: unknown section. Fix: remove it \(sections: \[model\]"):
        load_config(write(tmp_path, GRID + "[logging]\nlevel = 1\n"), env={})


def test_a_table_where_a_list_of_tables_belongs_says_so(tmp_path: Path) -> None:
    text = '[model]\npath = "m"\n[space]\n[space.feature]\nname = "a"\nvalues = ["x"]\n'
    with pytest.raises(
        ConfigError, match=r"^\[space\] feature: expected a list of tables, got .*\[\[space.feature\]\] table$"
    ):
        load_config(write(tmp_path, text), env={})


def test_every_problem_gets_one_line(tmp_path: Path) -> None:
    text = GRID + '[run]\nactors = -1\ndevice = "gpus"\nport = 8000\n[serve]\ncache_bytes = -1\nmetrics = "yes"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert info.value.problems == (
        '[run] device: \'gpus\' is not one of "auto" | "cpu" | "gpu". Fix: did you mean `device = "gpu"`?',
        '[run] actors: must be positive, got -1. Fix: write e.g. `actors = 2` or `actors = "auto"`',
        "[run] port: unknown field. Fix: it belongs in [serve]",
        "[serve] cache_bytes: must be 0 or more, got -1. Fix: write e.g. `cache_bytes = 67108864`",
        "[serve] metrics: expected true or false, got 'yes'. Fix: write e.g. `metrics = true`",
    )
    assert str(info.value).startswith("5 problems:\n[run] device: ")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("start = 1", 'start = "x"'), r"^\[\[space.feature\]\] #2 \(b\) start: expected a number, got 'x'. Fix: "),
        (("stop = 3", "stop = 3\nstpe = 1"), r"^\[\[space.feature\]\] #2 \(b\) stpe: unknown field. Fix: did you mean"),
        (
            ('values = ["x", "y"]', 'values = ["x", "x"]'),
            r"^\[\[space.feature\]\] #1 \(a\) values: 'x' is listed twice",
        ),
        (('values = ["x", "y"]', 'values = ["x", "y"]\nstep = 2'), r"#1 \(a\): give either `values` or"),
        (('name = "b"', 'name = "a"'), r"^\[space\] feature: two features are named 'a'"),
        (('type = "grid"', 'type = "tabel"'), r'^\[space\] type: \'tabel\' is not one of "grid" \| "table". Fix: did'),
        (('path = "model"', 'path = ""'), r"^\[model\] path: must not be empty"),
        (
            ("[model]\n", "[model]\noutputs = []\n"),
            r"^\[model\] outputs: must not be empty. Fix: write e.g. `outputs = \[",
        ),
        (
            ("[model]\n", "[run]\nactors = 2.5\n[model]\n"),
            r'^\[run\] actors: expected a positive integer or "auto", got',
        ),
        (("[model]\n", '[run]\nwrite_tasks = "aut"\n[model]\n'), r'Fix: did you mean `write_tasks = "auto"`\?'),
        (("[model]\n", "[serve]\nport = 70000\n[model]\n"), r"70000 is above the highest TCP port of 65535"),
        (
            ("[model]\n", '[serve]\nloop = "uvlop"\n[model]\n'),
            r'^\[serve\] loop: \'uvlop\' is not one of "auto" \| "asyncio" \| "uvloop". '
            r'Fix: did you mean `loop = "uvloop"`',
        ),
        (("[model]\n", "[store]\nkeep_versions = true\n[model]\n"), r"\[store\] keep_versions: expected a positive"),
        (("[model]\n", "[refresh]\nbatch_max_size = 0\n[model]\n"), r"\[refresh\] batch_max_size: must be positive"),
        (("[model]\n", "[refresh]\nwindow_ms = -1\n[model]\n"), r"\[refresh\] window_ms: must be 0.0 or more, got -1"),
        (("[model]\n", "[refresh]\nbatch_size = 10\n[model]\n"), r"\[refresh\] batch_size: unknown field. Fix: did"),
        (
            ('type = "grid"', 'type = "grid"\nkey_column = "id"'),
            r"key_column: unknown field. Fix: it belongs in \[space\] ",
        ),
    ],
)
def test_field_errors_name_the_table_the_field_and_the_fix(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = GRID.replace(*change, 1)
    assert text != GRID
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_a_table_space_needs_a_format_it_can_tell(tmp_path: Path) -> None:
    text = '[model]\npath = "m"\n[space]\ntype = "table"\npath = "users.txt"\nkey_column = "id"\n'
    with pytest.raises(ConfigError, match=r"\[space\] format: cannot tell the format of 'users.txt'"):
        load_config(write(tmp_path, text), env={})
    config = load_config(write(tmp_path, text + 'format = "csv"\n'), env={})
    assert config.space.format == "csv"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"\[space\] key_column: is required. Fix: add `key_column = "):
        load_config(write(tmp_path, text.replace('key_column = "id"\n', "")), env={})


def test_auto_values_read_as_none_and_numbers_as_given(tmp_path: Path) -> None:
    text = GRID + '[run]\nactors = "auto"\ncpus_per_actor = 0.5\nwrite_tasks = 2\n'
    run = load_config(write(tmp_path, text), env={}).run
    assert (run.actors, run.cpus_per_actor, run.write_tasks) == (None, 0.5, 2)
    assert load_config(write(tmp_path, GRID), env={"RAY_ADDRESS": "ray://head:10001"}).run.ray_address == (
        "ray://head:10001"
    )


def test_the_resolved_defaults_are_the_files_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GRID), env={})
    assert config.run == RunConfig()
    assert config.verify == VerifyConfig()
    assert (config.verify.sample, config.verify.max_drift, config.verify.max_changed_fraction) == (10_000, None, None)
    assert config.serve == ServeConfig()
    assert config.misses == MissesConfig()
    assert (config.misses.include, config.serve.record_misses) == (False, False)
    assert config.refresh == RefreshConfig()
    assert (config.refresh.batch_max_size, config.refresh.window_ms, config.refresh.consumer) == (1024, 20.0, "")
    assert config.store == StoreConfig(config.store.url)
    assert config.model == ModelConfig(tmp_path / "model")
    assert (config.serve.batch_target_ms, config.serve.max_key_bytes, config.run.device) == (50.0, 1024, "auto")
    short = load_config(write(tmp_path, GRID + "[serve]\ndeadline_ms = 60\n"), env={})
    assert short.serve.batch_target_ms == 30.0  # half the deadline when that is below 50 ms


def test_every_field_is_described_for_the_schema() -> None:
    def fields(model: type[BaseModel]) -> list[tuple[str, str | None]]:
        found = []
        for name, info in model.model_fields.items():
            found.append((f"{model.__name__}.{name}", info.description))
            for member in (info.annotation, *get_args(info.annotation)):
                for inner in (member, *get_args(member)):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        found.extend(fields(inner))
        return found

    undescribed = sorted({name for name, description in fields(ConfigFile) if not description})
    assert not undescribed


def test_schema_checks_the_example_and_rejects_an_unknown_field() -> None:
    import jsonschema  # a dev dependency: missing, the test fails rather than skips

    schema = document_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    document = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert list(validator.iter_errors(document)) == []
    assert set(schema["properties"]) == {"model", "space", "store", "run", "verify", "serve", "refresh"}
    assert schema["required"] == ["model", "space"]
    table = {"model": {"path": "m"}, "space": {"type": "table", "path": ["a.parquet"], "key_column": "id"}}
    assert validator.is_valid(table)
    misspelt = {**document, "model": {**document["model"], "signatur": "x"}}
    assert [error.message for error in validator.iter_errors(misspelt)] == [
        "Additional properties are not allowed ('signatur' was unexpected)"
    ]
    assert not validator.is_valid({**document, "run": {"actors": 0}})
    assert not validator.is_valid({**document, "run": {"device": "tpu"}})
    assert validator.is_valid({**document, "run": {"actors": "auto", "cpus_per_actor": 0.5}})


def test_schema_has_no_null_since_toml_has_none() -> None:
    text = json.dumps(document_schema())
    assert '"null"' not in text
    assert '"default": null' not in text


def test_misses_are_configured_on_both_sides(tmp_path: Path) -> None:
    text = GRID.replace("[space]\n", "[space]\ninclude_misses = true\nmisses_min_count = 2\nmisses_max = 50\n")
    text += '[serve]\nfallback = "on"\nrecord_misses = true\nmisses_flush_seconds = 0.5\nmisses_max_keys = 1000\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.misses == MissesConfig(include=True, min_count=2, max_keys=50)
    serve = config.serve
    assert (serve.record_misses, serve.misses_flush_seconds, serve.misses_max_keys) == (True, 0.5, 1000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[model]\npath = "m"\n[space]\ntype = "table"\npath = "u.csv"\nkey_column = "id"\ninclude_misses = true\n',
            r"\[space\] include_misses: a table space's keys carry no features, so the misses the API records cannot "
            r"be scored .*Fix: remove include_misses",
        ),
        (GRID + "[serve]\nrecord_misses = true\n", r'\[serve\] record_misses: .* Fix: add `fallback = "on"`'),
        (GRID.replace("[space]\n", "[space]\nmisses_min_count = 0\n"), r"\[space\] misses_min_count: must be positive"),
        (GRID + "[serve]\nmisses_max_keys = -1\n", r"\[serve\] misses_max_keys: must be positive"),
    ],
    ids=["table", "fallback-off", "min-count", "cap"],
)
def test_misses_settings_that_cannot_work_name_the_field_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})
