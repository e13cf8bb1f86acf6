"""The configuration file (TOML), read once into typed objects.

:mod:`precompute.settings` models the file (types, defaults, bounds, its own consistency checks); this
module reads it, words every validation error as one line that names the field, the problem and the fix
(:mod:`precompute.config_errors`), and resolves it into the objects the rest of the code uses.

Paths in the file are relative to the file itself, so a scheduled job finds its model and data whatever its
working directory. Environment overrides: ``PRECOMPUTE_STORE`` replaces ``[store] url``; ``RAY_ADDRESS`` is
honoured when ``[run] ray_address`` is unset. ``PRECOMPUTE_FALLBACK`` (off | on | store-down) replaces
``[serve] fallback``; the variable named by ``[serve] auth_tokens_env`` (default ``PRECOMPUTE_API_TOKENS``)
holds the API's tokens, comma-separated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

from pydantic import BaseModel, ValidationError

from precompute.config_errors import ConfigError, explain
from precompute.model import cache_dir, fetch, is_uri, shown_uri
from precompute.settings import (
    TABLE_FORMATS,
    Auth,
    Auto,
    BatchPolicy,
    ConfigFile,
    Device,
    EventLoop,
    Fallback,
    GridSpaceSection,
    LogFormat,
    ModelSection,
    RefreshSection,
    RunSection,
    ServeSection,
    StoreSection,
    TableFormat,
    TableSpaceSection,
    VerifySection,
    url_safe_name,
)
from precompute.space import Categorical, Dimension, GridSpace, Range, Space, TableSpace
from precompute.store import StoreURL

__all__ = [
    "STORE_ENV",
    "TABLE_FORMATS",
    "Config",
    "ConfigError",
    "MissesConfig",
    "ModelConfig",
    "RefreshConfig",
    "RunConfig",
    "ServeConfig",
    "StoreConfig",
    "VerifyConfig",
    "load_config",
    "read_document",
    "worker_count",
]

STORE_ENV = "PRECOMPUTE_STORE"
FALLBACK_ENV = "PRECOMPUTE_FALLBACK"

T = TypeVar("T")


def _default(section: type[BaseModel], name: str) -> Any:
    # The defaults are written once, in the file's models; the resolved objects below take theirs from there.
    return section.model_fields[name].default


def _auto(value: T | Auto) -> T | None:
    """``"auto"`` as the code reads it: None, decided later (from the cluster's resources, the store)."""
    return None if value == "auto" else value


def _same_fields(resolved: type, section: BaseModel) -> dict[str, Any]:
    """The fields of a resolved dataclass taken as they are from its section of the file."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(resolved)}


_store = StoreSection()
_run = RunSection()
_serve = ServeSection()
_verify = VerifySection()
_refresh = RefreshSection()


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``, resolved: ``path`` is absolute. A model given as a URI has ``uri`` set, and ``path`` is
    the local folder it is fetched into (:meth:`local_path`)."""

    path: Path
    signature: str = _default(ModelSection, "signature")
    outputs: tuple[str, ...] | None = _default(ModelSection, "outputs")  # None: every output of the signature
    uri: str | None = None
    name: str | None = None  # [model] name; Config.name is the one used

    @classmethod
    def of(cls, section: ModelSection, base: Path) -> ModelConfig:
        outputs = tuple(section.outputs) if section.outputs else None
        if is_uri(section.path):
            fetched = cache_dir() / "fetched" / hashlib.sha256(section.path.encode()).hexdigest()[:16]
            return cls(fetched, section.signature, outputs, uri=section.path, name=section.name)
        return cls(base / section.path, section.signature, outputs, name=section.name)

    @property
    def location(self) -> str:
        """The model as the config names it, for logs and version records: its URI (with any key or token in
        its query replaced by ``***``), or its absolute path."""
        return shown_uri(self.uri) if self.uri else str(self.path)

    def local_path(self) -> Path:
        """The model's folder on this machine, fetched from its URI first (anew: the model may have changed)."""
        return fetch(self.uri, self.path) if self.uri else self.path


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``, resolved: ``url`` is ``PRECOMPUTE_STORE`` when set, a relative SQLite path made absolute."""

    url: str
    keep_versions: int = _store.keep_versions
    lock_ttl_seconds: float = _store.lock_ttl_seconds

    @classmethod
    def of(cls, section: StoreSection, base: Path, env: dict[str, str]) -> StoreConfig:
        url = section.url
        override = env.get(STORE_ENV)
        if override:
            url = override
        elif url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = "sqlite:///" + str((base / url.removeprefix("sqlite:///")).resolve())  # relative to the file
        try:
            StoreURL.parse(url)
        except ValueError as exc:
            where = f"environment variable {STORE_ENV}" if override else "[store] url"
            raise ConfigError(f"{where}: {exc}") from None
        return cls(url, section.keep_versions, section.lock_ttl_seconds)


@dataclass(frozen=True)
class RunConfig:
    """``[run]``, resolved: ``"auto"`` is None (decided from the cluster), an empty ray_address is RAY_ADDRESS."""

    ray_address: str | None = None
    device: Device = _run.device
    actors: int | None = _auto(_run.actors)
    cpus_per_actor: float | None = _auto(_run.cpus_per_actor)
    gpus_per_actor: float = _run.gpus_per_actor
    batch_size: int = _run.batch_size
    write_tasks: int | None = _auto(_run.write_tasks)
    verify_samples: int = _run.verify_samples
    stall_timeout_s: float = _run.stall_timeout_s
    max_actors: int | None = _run.max_actors
    ship_code: bool = _run.ship_code

    @classmethod
    def of(cls, section: RunSection, env: dict[str, str]) -> RunConfig:
        return cls(
            ray_address=section.ray_address or env.get("RAY_ADDRESS") or None,
            device=section.device,
            actors=_auto(section.actors),
            cpus_per_actor=_auto(section.cpus_per_actor),
            gpus_per_actor=section.gpus_per_actor,
            batch_size=section.batch_size,
            write_tasks=_auto(section.write_tasks),
            verify_samples=section.verify_samples,
            stall_timeout_s=section.stall_timeout_s,
            max_actors=section.max_actors,
            ship_code=section.ship_code,
        )


_grid_misses = GridSpaceSection.model_fields


@dataclass(frozen=True)
class MissesConfig:
    """``[space] include_misses`` and its limits (grid spaces only): which recorded misses a run scores."""

    include: bool = _grid_misses["include_misses"].default
    min_count: int = _grid_misses["misses_min_count"].default
    max_keys: int = _grid_misses["misses_max"].default

    @classmethod
    def of(cls, section: GridSpaceSection | TableSpaceSection) -> MissesConfig:
        if isinstance(section, TableSpaceSection):
            return cls()  # the section refuses include_misses = true
        return cls(section.include_misses, section.misses_min_count, section.misses_max)


@dataclass(frozen=True)
class VerifyConfig:
    """``[verify]``: the drift gate. A limit of None is off."""

    sample: int = _verify.sample
    max_drift: float | None = _verify.max_drift
    max_changed_fraction: float | None = _verify.max_changed_fraction
    changed_rel_tol: float = _verify.changed_rel_tol
    changed_abs_tol: float = _verify.changed_abs_tol

    @classmethod
    def of(cls, section: VerifySection) -> VerifyConfig:
        return cls(**_same_fields(cls, section))


@dataclass(frozen=True)
class ServeConfig:
    """``[serve]``, resolved: ``PRECOMPUTE_FALLBACK`` applied, ``batch_target_ms`` defaulted from the deadline,
    and ``auth_tokens`` read from the environment variable ``auth_tokens_env`` (never from the file)."""

    host: str = _serve.host
    port: int = _serve.port
    refresh_seconds: float = _serve.refresh_seconds
    max_batch_keys: int = _serve.max_batch_keys
    max_key_bytes: int = _serve.max_key_bytes
    max_body_bytes: int = _serve.max_body_bytes
    fallback: Fallback = _serve.fallback
    deadline_ms: float = _serve.deadline_ms
    deadline_default: dict[str, float] | None = _serve.deadline_default  # answered when the model is late
    batch_max_size: int = _serve.batch_max_size
    batch_max_wait_ms: float = _serve.batch_max_wait_ms
    batch_target_ms: float = _serve.target_ms
    batch_policy: BatchPolicy = _serve.batch_policy
    max_pending: int = _serve.max_pending
    write_back: bool = _serve.write_back
    write_back_ttl_seconds: float | None = _serve.write_back_ttl_seconds  # None: written-back answers never expire
    cache_bytes: int = _serve.cache_bytes
    negative_ttl_seconds: float = _serve.negative_ttl_seconds
    metrics: bool = _serve.metrics
    access_log: bool = _serve.access_log
    loop: EventLoop = _serve.loop
    log_format: LogFormat = _serve.log_format
    auth: Auth = _serve.auth
    auth_tokens_env: str = _serve.auth_tokens_env
    auth_tokens: tuple[str, ...] = ()  # from the environment, never from the file
    shutdown_seconds: float = _serve.shutdown_seconds
    record_misses: bool = _serve.record_misses
    misses_flush_seconds: float = _serve.misses_flush_seconds
    misses_max_keys: int = _serve.misses_max_keys
    workers: int | None = _auto(_serve.workers)  # None: one per core this process may use (worker_count)

    def __repr__(self) -> str:  # the generated one would print the tokens into logs and tracebacks
        fields = ", ".join(
            f"{name}={'<hidden>' if name == 'auth_tokens' and value else repr(value)}"
            for name, value in vars(self).items()
        )
        return f"ServeConfig({fields})"

    @classmethod
    def of(cls, section: ServeSection, env: dict[str, str]) -> ServeConfig:
        fallback = section.fallback
        override = env.get(FALLBACK_ENV)
        if override:
            modes: tuple[str, ...] = get_args(Fallback)
            if override not in modes:
                listed = " | ".join(f'"{mode}"' for mode in modes)
                raise ConfigError(
                    f"environment variable {FALLBACK_ENV}: {override!r} is not one of {listed}. Fix: {FALLBACK_ENV}=on"
                )
            fallback = cast(Fallback, override)
        tokens_env = section.auth_tokens_env
        tokens = tuple(token.strip() for token in env.get(tokens_env, "").split(",") if token.strip())
        if section.auth != "off" and not tokens:
            raise ConfigError(
                f'[serve] auth = "{section.auth}" needs at least one token in the environment variable {tokens_env} '
                f"(comma-separated; tokens never go in the file). Fix: export {tokens_env}=<token>"
            )
        same = {
            f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name in ServeSection.model_fields
        }
        return cls(
            **{
                **same,
                "fallback": fallback,
                "deadline_default": dict(section.deadline_default) if section.deadline_default else None,
                "batch_target_ms": section.target_ms,
                "auth_tokens": tokens,
                "workers": _auto(section.workers),
            }
        )


def worker_count(workers: int | None) -> int:
    """``[serve] workers`` as a number. ``"auto"`` (None) is the cores this process may use (its CPU affinity,
    which a cpuset narrows), not the machine's; a CPU quota (a Kubernetes CPU limit) does not show there,
    which is why the deployment example sets ``--workers`` to its limit."""
    return workers if workers is not None else len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class RefreshConfig:
    """``[refresh]``, resolved: an empty consumer name is ``<hostname>-<pid>``."""

    batch_max_size: int = _refresh.batch_max_size
    window_ms: float = _refresh.window_ms
    block_ms: int = _refresh.block_ms
    backlog_max: int = _refresh.backlog_max
    consumer: str = _refresh.consumer
    record_seconds: float = _refresh.record_seconds

    @classmethod
    def of(cls, section: RefreshSection) -> RefreshConfig:
        return cls(**_same_fields(cls, section))


@dataclass(frozen=True)
class Config:
    """The whole configuration, resolved. ``source`` is the file it was read from."""

    source: Path
    model: ModelConfig
    space: Space
    store: StoreConfig
    run: RunConfig
    serve: ServeConfig
    verify: VerifyConfig = VerifyConfig()
    misses: MissesConfig = MissesConfig()
    refresh: RefreshConfig = RefreshConfig()

    @property
    def store_url(self) -> StoreURL:
        return StoreURL.parse(self.store.url)

    @property
    def name(self) -> str:
        """The model's name when served (``[model] name``), by default the file's stem with anything a URL
        would escape replaced by ``-`` (``job a.toml`` is ``job-a``)."""
        return self.model.name or url_safe_name(self.source.stem)


def read_document(raw: dict[str, Any]) -> ConfigFile:
    """The parsed TOML document checked against the file's models. Raises :class:`ConfigError`, one line a
    problem."""
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(*(explain(exc, raw) or [str(exc)])) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, check and resolve the configuration file. ``env`` defaults to the process's environment.

    Raises :class:`ConfigError` (the message names each field and the fix) for a missing, malformed or wrong
    file, and for bad environment overrides.
    """
    env = dict(os.environ) if env is None else env
    source = Path(path).resolve()
    try:
        raw = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist. Fix: pass --config PATH to a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    document = read_document(raw)
    base = source.parent
    return Config(
        source=source,
        model=ModelConfig.of(document.model, base),
        space=_space(document.space, base),
        store=StoreConfig.of(document.store, base, env),
        run=RunConfig.of(document.run, env),
        serve=ServeConfig.of(document.serve, env),
        verify=VerifyConfig.of(document.verify),
        misses=MissesConfig.of(document.space),
        refresh=RefreshConfig.of(document.refresh),
    )


def _space(section: GridSpaceSection | TableSpaceSection, base: Path) -> Space:
    if isinstance(section, TableSpaceSection):
        paths = tuple(path if "://" in path else str(base / path) for path in section.paths)
        table_format: TableFormat = section.table_format
        return TableSpace(paths, table_format, section.key_column, dict(section.columns))
    dimensions: list[Dimension] = []
    for feature in section.feature:
        if feature.values is not None:
            dimensions.append(Categorical(feature.name, feature.labels()))
        elif feature.start is not None and feature.stop is not None:
            dimensions.append(Range.of(feature.name, feature.start, feature.stop, feature.step))
        else:  # GridFeature's own check lets no other shape through
            raise AssertionError(f"feature {feature.name!r} has neither values nor a range")
    return GridSpace(dimensions, section.template())
