"""What ``precompute serve`` serves: one job config, several (``--config a.toml --config b.toml``), or a serve
file that lists them (``--serve-file serve.toml``, e.g. from a Kubernetes config map).

Each job config is one model, named by ``[model] name`` (default: the file's stem), with its own store, live
version, caches, fallback and per-request limits. What belongs to the process instead (:data:`PROCESS_FIELDS`:
the address, the workers, logging, auth, shutdown, whether ``/metrics`` exists) is read from one place: the
serve file's ``[serve]`` table when there is one, else the first config. Another config that writes one of
those fields with a different value is refused, naming both files, rather than silently ignored; the
process values are then copied into every model's config, so that nothing downstream reads a stale one.

A serve file::

    models = ["babyweight.toml", "churn.toml"]   # job configs, relative to this file

    [serve]                                     # process settings only (PROCESS_FIELDS)
    host = "0.0.0.0"
    port = 8080
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model

from precompute.config import STORE_ENV, Config, ConfigError, ServeConfig, load_config
from precompute.settings import ServeSection, _Section, _TomlSchema

#: ``[serve]`` fields that belong to the process, not to one model: read from the serve file or the first
#: config. Every other ``[serve]`` field (deadline, caches, fallback, limits...) is per model.
PROCESS_FIELDS = (
    "host",
    "port",
    "workers",
    "access_log",
    "loop",
    "log_format",
    "auth",
    "auth_tokens_env",
    "shutdown_seconds",
    "metrics",
)

_process_fields: dict[str, Any] = {
    name: (ServeSection.model_fields[name].annotation, ServeSection.model_fields[name]) for name in PROCESS_FIELDS
}
ProcessServeSection = create_model(  # the serve file's [serve]: the same fields, defaults and checks
    "ProcessServeSection",
    __base__=_Section,
    __doc__="The process settings of several models served at once.",
    **_process_fields,
)


class ServeFile(_Section):
    """A whole serve file."""

    model_config = ConfigDict(
        title="serve.toml",
        json_schema_extra={"description": "Several precompute job configs served by one API (precompute serve)."},
    )

    models: list[str] = Field(
        min_length=1,
        description="The job configs served, one model each, relative to this file.",
        examples=[["babyweight.toml", "churn.toml"]],
    )
    serve: ProcessServeSection = Field(
        default_factory=ProcessServeSection,
        description=f"The process settings ({', '.join(PROCESS_FIELDS)}); every other [serve] field is set per "
        "model in its job config.",
    )


def serve_file_schema() -> dict[str, Any]:
    """The JSON Schema of a serve file (``precompute schema --serve-file``)."""
    schema = ServeFile.model_json_schema(schema_generator=_TomlSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@dataclass(frozen=True)
class Served:
    """The models one API serves, in order, and the process settings. ``files`` and ``serve_file`` are what
    they were read from (the workers of ``--workers N`` read them again)."""

    models: tuple[Config, ...]
    serve: ServeConfig
    files: tuple[Path, ...]
    serve_file: Path | None = None

    @classmethod
    def single(cls, config: Config) -> Served:
        return cls((config,), config.serve, (config.source,))

    @property
    def several(self) -> bool:
        return len(self.models) > 1

    @property
    def names(self) -> list[str]:
        return [config.name for config in self.models]

    def to_env(self) -> str:
        """What :func:`from_env` reads back, in a worker process."""
        files = [str(path) for path in self.files]
        return json.dumps({"configs": files, "serve_file": str(self.serve_file) if self.serve_file else None})


def from_env(value: str, env: dict[str, str] | None = None) -> Served:
    """:meth:`Served.to_env`'s text, loaded again; a plain path (an earlier release's value) is one config."""
    if not value.startswith("{"):
        return Served.single(load_config(value, env))
    data = json.loads(value)
    serve_file = data["serve_file"]
    if serve_file is not None:
        return load_served([], Path(serve_file), env)
    return load_served([Path(path) for path in data["configs"]], None, env)


def load_served(configs: Sequence[Path], serve_file: Path | None = None, env: dict[str, str] | None = None) -> Served:
    """Read the job configs (and the serve file), check that their names and process settings agree.

    Raises :class:`ConfigError` naming the files and the fix."""
    env = dict(os.environ) if env is None else env
    process: ServeConfig | None = None
    if serve_file is not None:
        document, base = _serve_file(serve_file)
        configs = [base / path for path in document.models]
        section = ServeSection(**document.serve.model_dump(exclude_unset=True))
        process = ServeConfig.of(section, env)
        reference = f"serve file {serve_file}"
    if not configs:
        raise ConfigError(
            "no job config to serve. Fix: --config FILE (repeated for several models) or --serve-file FILE"
        )
    if len(configs) == 1 and serve_file is None:
        return Served.single(load_config(configs[0], env))
    if len(configs) > 1 and env.get(STORE_ENV):
        raise ConfigError(
            f"environment variable {STORE_ENV} is set, and would point all {len(configs)} models at one store. "
            f"Fix: unset {STORE_ENV} and set [store] url in each job config"
        )
    loaded = [load_config(path, env) for path in configs]
    _check_names(loaded)
    if process is None:
        process, reference = loaded[0].serve, f"{configs[0]} (the first config)"
    values = {name: getattr(process, name) for name in PROCESS_FIELDS}
    for config in loaded[0 if serve_file is not None else 1 :]:
        for name in _written(config.source):
            if name in values and getattr(config.serve, name) != values[name]:
                raise ConfigError(
                    f"[serve] {name} is {getattr(config.serve, name)!r} in {config.source} but {values[name]!r} in "
                    f"{reference}: it is a process setting, the same for every model served. Fix: remove it from "
                    f"{config.source}, or give it the same value"
                )
    values["auth_tokens"] = process.auth_tokens
    models = tuple(dataclasses.replace(config, serve=dataclasses.replace(config.serve, **values)) for config in loaded)
    return Served(models, process, tuple(c.source for c in loaded), serve_file.resolve() if serve_file else None)


def _serve_file(path: Path) -> tuple[ServeFile, Path]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"serve file {path} does not exist. Fix: pass --serve-file PATH to a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"serve file {path} is not valid TOML: {exc}") from None
    try:
        document = ServeFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            fix = {
                "extra_forbidden": f"only models and the process settings [serve] {', '.join(PROCESS_FIELDS)} belong "
                "here; set per-model fields in each job config",
                "missing": 'models = ["a.toml", "b.toml"]',
            }.get(error["type"], "see `precompute schema --serve-file`")
            problems.append(f"serve file {path}: {where}: {error['msg']}. Fix: {fix}")
        raise ConfigError(*problems) from None
    return document, path.resolve().parent


def _check_names(configs: Sequence[Config]) -> None:
    sources = [config.source for config in configs]
    for source in sources:
        if sources.count(source) > 1:
            raise ConfigError(f"{source} is listed twice. Fix: list each job config once")
    seen: dict[str, Path] = {}
    for config in configs:
        first = seen.setdefault(config.name, config.source)
        if first != config.source:
            raise ConfigError(
                f"two models are named {config.name!r}: {first} and {config.source}. Fix: give one of them "
                f'`[model] name = "{config.name}-2"` (a name defaults to its file\'s name)'
            )


def _written(source: Path) -> list[str]:
    """The ``[serve]`` fields ``source`` writes itself (a default is no conflict)."""
    serve = tomllib.loads(source.read_text()).get("serve", {})
    return list(serve) if isinstance(serve, dict) else []
