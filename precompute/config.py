"""The configuration file (TOML), read once into typed objects.

Every error names the field and says how to fix it. Paths in the file are relative to the file itself, so
a scheduled job finds its model and data whatever its working directory. Environment overrides:
``PRECOMPUTE_STORE`` replaces ``[store] url``; ``RAY_ADDRESS`` is honoured when ``[run] ray_address`` is unset.
``PRECOMPUTE_FALLBACK`` (off | on | store-down) replaces ``[serve] fallback``; the variable named by
``[serve] auth_tokens_env`` (default ``PRECOMPUTE_API_TOKENS``) holds the API's tokens, comma-separated.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute.keys import KeyTemplate
from precompute.space import Categorical, Dimension, GridSpace, Range, Space, TableSpace
from precompute.store import StoreURL

STORE_ENV = "PRECOMPUTE_STORE"
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


class ConfigError(ValueError):
    """The configuration is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    signature: str = "serving_default"
    outputs: tuple[str, ...] | None = None  # None: every output of the signature


@dataclass(frozen=True)
class StoreConfig:
    url: str
    keep_versions: int = 3
    lock_ttl_seconds: float = 60.0


@dataclass(frozen=True)
class RunConfig:
    ray_address: str | None = None
    device: str = "auto"  # auto | cpu | gpu
    actors: int | None = None  # None: decided from the cluster's resources
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 1.0
    batch_size: int = 16_384
    write_tasks: int | None = None
    verify_samples: int = 64


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    refresh_seconds: float = 1.0
    max_batch_keys: int = 1_000
    max_key_bytes: int = 1_024
    max_body_bytes: int = 1_048_576
    # Online fallback: "off", "on" (any miss that decodes to features) or "store-down" (only when the store
    # read failed). PRECOMPUTE_FALLBACK overrides the file.
    fallback: str = "off"
    deadline_ms: float = 200.0
    deadline_default: dict[str, float] | None = None  # answered (source "default") when the model is late
    batch_max_size: int = 256
    batch_max_wait_ms: float = 0.0  # 0: a batch is whatever queued while the model was busy
    batch_target_ms: float = 50.0
    batch_policy: str = "aimd"  # aimd | fit | fixed
    max_pending: int = 4_096
    write_back: bool = False
    write_back_ttl_seconds: float | None = None  # a written-back answer reads as absent after this; None: never
    cache_bytes: int = 64 * 1024 * 1024  # 0: no hot-key cache
    negative_ttl_seconds: float = 2.0  # 0: no negative cache
    metrics: bool = True  # false: no /metrics and no timing on the hot path (to measure what they cost)
    access_log: bool = False
    log_format: str = "json"  # json | text
    auth: str = "off"  # off | api-key | bearer
    auth_tokens_env: str = "PRECOMPUTE_API_TOKENS"
    auth_tokens: tuple[str, ...] = ()  # from the environment, never from the file
    shutdown_seconds: float = 10.0

    def __repr__(self) -> str:  # the generated one would print the tokens into logs and tracebacks
        fields = ", ".join(
            f"{name}={'<hidden>' if name == 'auth_tokens' and value else repr(value)}"
            for name, value in vars(self).items()
        )
        return f"ServeConfig({fields})"


@dataclass(frozen=True)
class Config:
    source: Path
    model: ModelConfig
    space: Space
    store: StoreConfig
    run: RunConfig
    serve: ServeConfig

    @property
    def store_url(self) -> StoreURL:
        return StoreURL.parse(self.store.url)


class _Table:
    """One TOML table, read field by field; complains about unknown fields with a suggestion."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table, e.g. [{where.strip('[]')}]")
        self.raw: dict[str, Any] = raw
        self.where = where
        self.seen: set[str] = set()

    def _fail(self, name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.where} {name}: {problem}. Fix: {fix}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, example: str) -> Any:
        self.seen.add(name)
        if name not in self.raw:
            if default is _REQUIRED:
                raise self._fail(name, "is required", f"add `{name} = {example}`")
            return default
        value = self.raw[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self._fail(name, f"expected {_kind_name(kinds)}, got {value!r}", f"write e.g. `{name} = {example}`")
        return value

    def positive(self, name: str, kind: type, default: Any, *, example: str, auto: bool = False) -> Any:
        value = self.get(name, (kind, str) if auto else kind, default, example=example)
        if auto and isinstance(value, str):
            if value != "auto":
                raise self._fail(name, f'expected a number or "auto", got {value!r}', f'`{name} = "auto"`')
            return None
        if value is not None and value <= 0:
            raise self._fail(name, f"must be positive, got {value}", f"write e.g. `{name} = {example}`")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(name, str, default, example=f'"{choices[0]}"')
        if value not in choices:
            options = " | ".join(f'"{c}"' for c in choices)
            raise self._fail(name, f"{value!r} is not one of {options}", f'`{name} = "{default}"`')
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, sorted(self.seen), n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"remove it (known: {', '.join(sorted(self.seen))})"
            raise ConfigError(f"{self.where} {name}: unknown field. Fix: {hint}")


_REQUIRED = object()


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    source = Path(path).resolve()
    try:
        raw = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist. Fix: pass --config PATH to a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    root = _Table(raw, "config")
    base = source.parent
    model = _model(_Table(root.get("model", dict, _REQUIRED, example="{ path = 'model' }"), "[model]"), base)
    space = _space(_Table(root.get("space", dict, _REQUIRED, example="{ type = 'grid' }"), "[space]"), base)
    store = _store(_Table(root.get("store", dict, {}, example="{ url = 'sqlite:///store.db' }"), "[store]"), base, env)
    run = _run(_Table(root.get("run", dict, {}, example="{ batch_size = 16384 }"), "[run]"), env)
    serve = _serve(_Table(root.get("serve", dict, {}, example="{ port = 8000 }"), "[serve]"), env)
    root.finish()
    return Config(source, model, space, store, run, serve)


def _model(t: _Table, base: Path) -> ModelConfig:
    path = base / t.get("path", str, _REQUIRED, example='"model"')
    signature = t.get("signature", str, "serving_default", example='"serving_default"')
    outputs = t.get("outputs", list, None, example='["weight_pounds"]')
    if outputs is not None and (not outputs or not all(isinstance(o, str) for o in outputs)):
        raise ConfigError('[model] outputs: expected a non-empty list of output names. Fix: `outputs = ["score"]`')
    t.finish()
    return ModelConfig(path, signature, tuple(outputs) if outputs else None)


def _space(t: _Table, base: Path) -> Space:
    kind = t.choice("type", ("grid", "table"), "grid")
    space = _grid(t) if kind == "grid" else _table_space(t, base)
    t.finish()
    return space


def _grid(t: _Table) -> GridSpace:
    features = t.get("feature", list, _REQUIRED, example='[{ name = "x", values = ["a", "b"] }]')
    if not features:
        raise ConfigError("[space] feature: a grid needs at least one [[space.feature]]")
    dims: list[Dimension] = []
    for i, raw in enumerate(features):
        f = _Table(raw, f"[[space.feature]] #{i + 1}")
        name = f.get("name", str, _REQUIRED, example='"mother_age"')
        values = f.get("values", list, None, example='["a", "b"]')
        start = f.get("start", float, None, example="12")
        stop = f.get("stop", float, None, example="50")
        step = f.get("step", float, 1.0, example="1")
        if values is not None:
            if start is not None or stop is not None:
                raise ConfigError(f"{f.where} ({name}): give either `values` or `start`/`stop`/`step`, not both")
            if not values or len(set(map(str, values))) != len(values):
                raise ConfigError(f"{f.where} ({name}) values: must be a non-empty list of distinct values")
            dims.append(Categorical(name, tuple(str(v) for v in values)))
        elif start is not None and stop is not None:
            if step <= 0 or stop < start:
                raise ConfigError(f"{f.where} ({name}): need start <= stop and step > 0. Fix: e.g. start = 1, stop = 9")
            dims.append(Range.of(name, start, stop, step))
        else:
            raise ConfigError(f"{f.where} ({name}): needs `values = [...]` or `start`, `stop` (and `step`)")
        f.finish()
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise ConfigError("[space] feature: two features have the same name")
    template_text = t.get("key", str, None, example='"{a}:{b}"')
    try:
        template = KeyTemplate.parse(template_text) if template_text else KeyTemplate.joined(names)
    except ValueError as exc:
        raise ConfigError(f"[space] key: {exc}") from None
    if sorted(template.fields) != sorted(names):
        raise ConfigError(
            f"[space] key: the template names {list(template.fields)} but the features are {names}. "
            "Fix: name every feature exactly once"
        )
    for dim in dims:
        if isinstance(dim, Categorical):
            for value in dim.values:
                clash = [sep for sep in template.separators() if sep in value]
                if clash:
                    raise ConfigError(
                        f"[space] feature {dim.name}: value {value!r} contains the key separator {clash[0]!r}, so "
                        "keys could not be read back. Fix: change the separator in [space] key"
                    )
    return GridSpace(dims, template)


def _table_space(t: _Table, base: Path) -> TableSpace:
    raw_paths = t.get("path", (str, list), _REQUIRED, example='"entities.parquet"')
    paths = [raw_paths] if isinstance(raw_paths, str) else raw_paths
    resolved = tuple(str(base / p) if "://" not in p else p for p in paths)
    suffix = Path(paths[0]).suffix.lower()
    fmt = t.get("format", str, TABLE_FORMATS.get(suffix), example='"parquet"')
    if fmt not in ("parquet", "csv", "json"):
        raise ConfigError(f'[space] format: {fmt!r} is not parquet, csv or json. Fix: `format = "parquet"`')
    key_column = t.get("key_column", str, _REQUIRED, example='"user_id"')
    columns = t.get("columns", dict, {}, example='{ model_input = "column" }')
    if not all(isinstance(v, str) for v in columns.values()):
        raise ConfigError('[space] columns: map each model input to a column name, e.g. { age = "user_age" }')
    return TableSpace(resolved, fmt, key_column, dict(columns))


def _store(t: _Table, base: Path, env: dict[str, str]) -> StoreConfig:
    url = t.get("url", str, "sqlite:///precompute.db", example='"sqlite:///store.db"')
    override = env.get(STORE_ENV)
    if override:
        url = override
    elif url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str((base / url.removeprefix("sqlite:///")).resolve())  # relative to the config file
    try:
        StoreURL.parse(url)
    except ValueError as exc:
        where = f"environment variable {STORE_ENV}" if override else "[store] url"
        raise ConfigError(f"{where}: {exc}") from None
    keep = t.positive("keep_versions", int, 3, example="3")
    ttl = t.positive("lock_ttl_seconds", float, 60.0, example="60")
    t.finish()
    return StoreConfig(url, keep, ttl)


def _run(t: _Table, env: dict[str, str]) -> RunConfig:
    address = t.get("ray_address", str, "", example='"ray://head:10001"') or env.get("RAY_ADDRESS") or None
    device = t.choice("device", ("auto", "cpu", "gpu"), "auto")
    config = RunConfig(
        ray_address=address,
        device=device,
        actors=t.positive("actors", int, None, example="2", auto=True),
        cpus_per_actor=t.positive("cpus_per_actor", float, None, example="0.5", auto=True),
        gpus_per_actor=t.positive("gpus_per_actor", float, 1.0, example="1"),
        batch_size=t.positive("batch_size", int, 16_384, example="16384"),
        write_tasks=t.positive("write_tasks", int, None, example="2", auto=True),
        verify_samples=t.positive("verify_samples", int, 64, example="64"),
    )
    t.finish()
    return config


def _serve(t: _Table, env: dict[str, str]) -> ServeConfig:
    fallback = t.choice("fallback", ("off", "on", "store-down"), "off")
    override = env.get("PRECOMPUTE_FALLBACK")
    if override:
        if override not in ("off", "on", "store-down"):
            raise ConfigError(
                f'environment variable PRECOMPUTE_FALLBACK: {override!r} is not one of "off" | "on" | "store-down". '
                "Fix: PRECOMPUTE_FALLBACK=on"
            )
        fallback = override
    deadline_ms = t.positive("deadline_ms", float, 200.0, example="200")
    target_ms = t.positive("batch_target_ms", float, min(50.0, deadline_ms / 2), example="50")
    if target_ms >= deadline_ms:
        raise ConfigError(
            f"[serve] batch_target_ms: {target_ms} must be below deadline_ms ({deadline_ms}), or no batch could "
            f"finish in time. Fix: `batch_target_ms = {deadline_ms / 4:g}`"
        )
    default = t.get("deadline_default", dict, None, example="{ weight_pounds = 7.0 }")
    if default is not None:
        bad = [k for k, v in default.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if not default or bad:
            raise ConfigError(
                "[serve] deadline_default: expected a table of output name -> number. "
                "Fix: `deadline_default = { weight_pounds = 7.0 }`"
            )
        default = {k: float(v) for k, v in default.items()}
    max_key_bytes = t.positive("max_key_bytes", int, 1_024, example="1024")
    if max_key_bytes > 1_024:
        raise ConfigError(f"[serve] max_key_bytes: {max_key_bytes} is above the store's limit of 1024. Fix: 1024")
    non_negative = {}
    for name, kind, fallback_value, example in (
        ("batch_max_wait_ms", float, 0.0, "2"),
        ("cache_bytes", int, 64 * 1024 * 1024, "67108864"),
        ("negative_ttl_seconds", float, 2.0, "2"),
    ):
        value = t.get(name, kind, fallback_value, example=example)
        if value < 0:
            raise ConfigError(f"[serve] {name}: must be 0 or more, got {value}. Fix: write e.g. `{name} = {example}`")
        non_negative[name] = value
    write_back_ttl = t.positive("write_back_ttl_seconds", float, None, example="3600")
    if write_back_ttl is not None and not t.get("write_back", bool, False, example="true"):
        raise ConfigError(
            "[serve] write_back_ttl_seconds: set, but nothing is written back. "
            "Fix: add `write_back = true`, or remove write_back_ttl_seconds"
        )
    auth = t.choice("auth", ("off", "api-key", "bearer"), "off")
    tokens_env = t.get("auth_tokens_env", str, "PRECOMPUTE_API_TOKENS", example='"PRECOMPUTE_API_TOKENS"')
    tokens = tuple(token.strip() for token in env.get(tokens_env, "").split(",") if token.strip())
    if auth != "off" and not tokens:
        raise ConfigError(
            f'[serve] auth = "{auth}" needs at least one token in the environment variable {tokens_env} '
            f"(comma-separated; tokens never go in the file). Fix: export {tokens_env}=<token>"
        )
    config = ServeConfig(
        host=t.get("host", str, "127.0.0.1", example='"0.0.0.0"'),
        port=t.positive("port", int, 8000, example="8000"),
        refresh_seconds=t.positive("refresh_seconds", float, 1.0, example="1.0"),
        max_batch_keys=t.positive("max_batch_keys", int, 1_000, example="1000"),
        max_key_bytes=max_key_bytes,
        max_body_bytes=t.positive("max_body_bytes", int, 1_048_576, example="1048576"),
        fallback=fallback,
        deadline_ms=deadline_ms,
        deadline_default=default,
        batch_max_size=t.positive("batch_max_size", int, 256, example="256"),
        batch_max_wait_ms=non_negative["batch_max_wait_ms"],
        batch_target_ms=target_ms,
        batch_policy=t.choice("batch_policy", ("aimd", "fit", "fixed"), "aimd"),
        max_pending=t.positive("max_pending", int, 4_096, example="4096"),
        write_back=t.get("write_back", bool, False, example="true"),
        write_back_ttl_seconds=write_back_ttl,
        cache_bytes=non_negative["cache_bytes"],
        negative_ttl_seconds=non_negative["negative_ttl_seconds"],
        metrics=t.get("metrics", bool, True, example="true"),
        access_log=t.get("access_log", bool, False, example="true"),
        log_format=t.choice("log_format", ("json", "text"), "json"),
        auth=auth,
        auth_tokens_env=tokens_env,
        auth_tokens=tokens,
        shutdown_seconds=t.positive("shutdown_seconds", float, 10.0, example="10"),
    )
    t.finish()
    return config
