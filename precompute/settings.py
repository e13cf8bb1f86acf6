"""The configuration file as typed models: what ``precompute.toml`` may hold, with every default written once.

These models describe the file only (its sections ``[model]``, ``[space]``, ``[store]``, ``[run]``,
``[verify]``, ``[serve]`` and ``[refresh]``): types, defaults, enumerations as literals, bounds and the checks that need
nothing but the file. :mod:`precompute.config` turns them into the objects the rest of the code uses
(paths made absolute, environment overrides applied, ``"auto"`` read as ``None``, the request space built)
and words the validation errors; :func:`document_schema` is the JSON Schema that ``precompute schema``
prints for editors.

The models are strict, as the hand-written parser before them was: no string is read as a number and no
number as a string, only an integer is widened to a float.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from precompute.keys import KeyTemplate
from precompute.store.codec import MAX_KEY_BYTES

Auto = Literal["auto"]
Device = Literal["auto", "cpu", "gpu"]
Fallback = Literal["off", "on", "store-down"]
BatchPolicy = Literal["aimd", "fit", "fixed"]
LogFormat = Literal["json", "text"]
EventLoop = Literal["auto", "asyncio", "uvloop"]
Auth = Literal["off", "api-key", "bearer"]
TableFormat = Literal["parquet", "csv", "json"]
TABLE_FORMATS: dict[str, TableFormat] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
SPACE_TYPE = "type"  # the field of [space] that picks the kind of space
#: A model's name as a path segment (``/models/<name>/predict``): nothing to escape in a URL or a label.
_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
MODEL_NAME = f"^{_MODEL_NAME}$"


def url_safe_name(text: str) -> str:
    """``text`` as a model name: what a URL would escape replaced by ``-`` (``job a`` is ``job-a``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:64] or "model"


@dataclass(frozen=True)
class Limit:
    """Why a field has its upper bound (``Annotated`` metadata): the error message says it."""

    reason: str


class Problems(ValueError):
    """Raised by a model's own checks: one ``(field, message)`` per problem, field None for the whole table.

    Each message is the problem and ``Fix: ...``; :mod:`precompute.config` prefixes the table and field.
    """

    def __init__(self, *problems: tuple[str | None, str]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelSection(_Section):
    """The TensorFlow model that is scored."""

    model_config = ConfigDict(title="[model]")

    path: str = Field(
        description="A TensorFlow SavedModel directory, relative to this file, or a URI read where it is used "
        "(gs://, s3://, hdfs://, or file:// for a folder every Ray node mounts).",
        examples=["model", "gs://my-bucket/models/babyweight/3"],
        min_length=1,
    )
    name: str | None = Field(
        None,
        json_schema_extra={"pattern": MODEL_NAME},  # checked by _name_url_safe, which words the fix
        description="The model's name where several are served at once (/models/<name>/predict; the model label of "
        "/metrics): letters, digits, '.', '_' and '-', at most 64. Default: the config file's name without .toml.",
        examples=["babyweight"],
    )
    signature: str = Field("serving_default", description="The SavedModel signature to call.")
    outputs: list[str] | None = Field(
        None,
        min_length=1,
        description="The outputs to store (numeric, one value per row). Default: every output of the signature.",
        examples=[["weight_pounds"]],
    )

    @model_validator(mode="after")
    def _name_url_safe(self) -> Self:
        if self.name is not None and not re.fullmatch(_MODEL_NAME, self.name):
            safe = url_safe_name(self.name)
            raise Problems(
                (
                    "name",
                    f"{self.name!r} is not URL-safe: a name is letters, digits, '.', '_' and '-', at most 64, "
                    f'starting with a letter or digit. Fix: `name = "{safe}"`',
                )
            )
        return self


class GridFeature(_Section):
    """One dimension of a grid: listed values, or a numeric range (stop inclusive)."""

    model_config = ConfigDict(title="[[space.feature]]")

    name: str = Field(description="The model input this feature feeds.", examples=["mother_age"], min_length=1)
    values: list[str | int | float | bool] | None = Field(
        None,
        min_length=1,
        description="The feature's values (categorical); give either values or start/stop/step.",
        examples=[["True", "False", "Unknown"]],
    )
    start: float | None = Field(
        None,
        description='A numeric range\'s first value; keys use the step\'s decimals ("25", "25.5").',
        examples=[12],
    )
    stop: float | None = Field(None, description="A numeric range's last value (inclusive).", examples=[50])
    step: PositiveFloat = Field(1.0, description="A numeric range's step.")

    @model_validator(mode="after")
    def _values_or_range(self) -> Self:
        ranged = self.start is not None or self.stop is not None or "step" in self.model_fields_set
        if self.values is not None:
            if ranged:
                raise Problems((None, "give either `values` or `start`/`stop`/`step`, not both. Fix: remove one"))
            labels = [str(value) for value in self.values]
            twice = [label for label, count in Counter(labels).items() if count > 1]
            if twice:
                raise Problems(("values", f"{twice[0]!r} is listed twice. Fix: list each value once"))
        elif self.start is None or self.stop is None:
            raise Problems(
                (None, "needs `values = [...]` or `start`, `stop` (and `step`). Fix: e.g. `start = 1`, `stop = 9`")
            )
        elif self.stop < self.start:
            raise Problems(
                (
                    None,
                    f"need start <= stop, got start = {self.start:g}, stop = {self.stop:g}. "
                    "Fix: e.g. start = 1, stop = 9",
                )
            )
        return self

    def labels(self) -> tuple[str, ...]:
        """The listed values as the key's text (``true`` is ``"True"``); empty for a range."""
        return tuple(str(value) for value in self.values or ())


class GridSpaceSection(_Section):
    """The cross product of the features: every combination is scored."""

    model_config = ConfigDict(title='[space] type = "grid"')

    type: Literal["grid"] = Field(
        "grid", description='"grid" (the cross product of [[space.feature]]) or "table" (known entities).'
    )
    key: str | None = Field(
        None,
        description='The key template, naming every feature once. Default: the features joined by ":".',
        examples=["{is_male}:{mother_age}:{plurality}:{gestation_weeks}"],
    )
    feature: list[GridFeature] = Field(
        min_length=1,
        description="The features, one [[space.feature]] per model input; their order is the enumeration order.",
        examples=[[{"name": "is_male", "values": ["True", "False"]}]],
    )
    include_misses: bool = Field(
        False,
        description="Also score the off-grid keys the API recorded ([serve] record_misses) into the new version, "
        "those answered online at least misses_min_count times.",
    )
    misses_min_count: PositiveInt = Field(
        3, description="How many online answers a recorded miss needs before a run includes it."
    )
    misses_max: PositiveInt = Field(
        100_000, description="The most recorded misses a run includes (the most answered first)."
    )

    @model_validator(mode="after")
    def _keys_read_back(self) -> Self:
        names = [feature.name for feature in self.feature]
        twice = [name for name, count in Counter(names).items() if count > 1]
        if twice:
            raise Problems(("feature", f"two features are named {twice[0]!r}. Fix: name each feature once"))
        try:
            template = self.template()
        except ValueError as exc:
            joined = ":".join("{" + name + "}" for name in names)
            raise Problems(("key", f'{exc}. Fix: e.g. `key = "{joined}"`')) from None
        if sorted(template.fields) != sorted(names):
            raise Problems(
                (
                    "key",
                    f"the template names {list(template.fields)} but the features are {names}. "
                    "Fix: name every feature exactly once",
                )
            )
        problems: list[tuple[str | None, str]] = []
        for feature in self.feature:
            for value in feature.labels():
                clash = [separator for separator in template.separators() if separator in value]
                if clash:
                    problems.append(
                        (
                            "feature",
                            f"{feature.name}: value {value!r} contains the key separator {clash[0]!r}, so keys "
                            "could not be read back. Fix: change the separator in [space] key",
                        )
                    )
        if problems:
            raise Problems(*problems)
        return self

    def template(self) -> KeyTemplate:
        """The key template: ``key``, or the features joined by ``:``. Raises ValueError for a bad one."""
        return KeyTemplate.parse(self.key) if self.key else KeyTemplate.joined([f.name for f in self.feature])


class TableSpaceSection(_Section):
    """Known entities read from files: one key per row."""

    model_config = ConfigDict(title='[space] type = "table"')

    type: Literal["table"] = Field(description='"table": known entities read from files (see path).')
    path: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="The table's file, or a list of files, relative to this file (or URLs such as s3://...): "
        ".parquet, .csv, .json/.jsonl/.ndjson.",
        examples=["users.parquet"],
    )
    format: TableFormat | None = Field(None, description="The files' format. Default: from the first path's suffix.")
    key_column: str = Field(
        description="The column that holds each entity's key; must be unique (the run fails verification otherwise).",
        examples=["user_id"],
    )
    columns: dict[str, str] = Field(
        {}, description="Model input -> column, where the names differ.", examples=[{"is_male": "sex"}]
    )
    include_misses: bool = Field(
        False, description="Grid spaces only: a table's keys carry no features, so a recorded miss cannot be scored."
    )

    @model_validator(mode="after")
    def _no_misses(self) -> Self:
        if self.include_misses:
            raise Problems(
                (
                    "include_misses",
                    "a table space's keys carry no features, so the misses the API records cannot be scored "
                    "(it records only off-grid keys of a grid space). Fix: remove include_misses",
                )
            )
        return self

    @model_validator(mode="after")
    def _format_known(self) -> Self:
        if self.format is None and Path(self.paths[0]).suffix.lower() not in TABLE_FORMATS:
            raise Problems(
                (
                    "format",
                    f"cannot tell the format of {self.paths[0]!r} from its suffix "
                    f'({", ".join(TABLE_FORMATS)}). Fix: `format = "parquet"` (or "csv", "json")',
                )
            )
        return self

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def table_format(self) -> TableFormat:
        """``format``, or the one the first path's suffix names (checked when the file is read)."""
        return self.format or TABLE_FORMATS[Path(self.paths[0]).suffix.lower()]


def _space_type(value: Any) -> str:
    # [space] type defaults to "grid", which a plain tagged union cannot say; a table that is not a table
    # is left to the grid model, which reports "expected a table".
    if isinstance(value, dict):
        kind = value.get(SPACE_TYPE, "grid")
        return kind if isinstance(kind, str) else repr(kind)
    return str(getattr(value, SPACE_TYPE, "grid"))


SpaceSection = Annotated[
    Annotated[GridSpaceSection, Tag("grid")] | Annotated[TableSpaceSection, Tag("table")],
    Discriminator(_space_type),
]


class StoreSection(_Section):
    """Where versions are written and read."""

    model_config = ConfigDict(title="[store]")

    url: str = Field(
        "sqlite:///precompute.db",
        description="The store URL, e.g. sqlite:///store.db (relative to this file), redis://host:6379/0, "
        "bigtable://project/instance/table, dynamodb://table. PRECOMPUTE_STORE overrides it.",
    )
    keep_versions: PositiveInt = Field(3, description="Published versions kept by gc (the live one included).")
    lock_ttl_seconds: PositiveFloat = Field(60.0, description="The run lock's lease, renewed while a run is alive.")


class RunSection(_Section):
    """The batch job: Ray, the scoring actors and the load."""

    model_config = ConfigDict(title="[run]")

    ray_address: str = Field(
        "",
        description='"" starts Ray locally (or joins RAY_ADDRESS when set); "host:port" (the head\'s GCS port) or '
        '"auto" (the cluster `ray start` recorded on this machine) joins a cluster. Ray Client (ray://) is refused.',
        examples=["10.0.0.5:6379", "auto"],
    )
    device: Device = Field("auto", description='"auto" (GPUs when the cluster has them), "cpu" or "gpu".')
    actors: PositiveInt | Auto = Field(
        "auto",
        description='Scoring actors. "auto": one per GPU, or a few CPU actors that leave CPU for I/O.',
        examples=[2],
    )
    max_actors: PositiveInt | None = Field(
        None,
        description="Let the actor pool grow up to this many actors while the cluster has (or autoscales to) room; "
        "default: a fixed pool of `actors`.",
        examples=[16],
    )
    cpus_per_actor: PositiveFloat | Auto = Field(
        "auto",
        description='CPUs per scoring actor; fractions are fine (0.5). "auto": from the cluster.',
        examples=[0.5],
    )
    gpus_per_actor: PositiveFloat = Field(
        1.0, description='GPUs per scoring actor with device = "gpu"; 0.5 packs two actors on a GPU.'
    )
    batch_size: PositiveInt = Field(16_384, description="Rows per model call.")
    write_tasks: PositiveInt | Auto = Field(
        "auto",
        description='Concurrent write tasks. "auto": from the store (a single-writer store such as SQLite uses 1).',
        examples=[2],
    )
    verify_samples: PositiveInt = Field(
        64, description="Golden keys re-scored on the driver and compared after the load."
    )
    stall_timeout_s: PositiveFloat = Field(
        600.0,
        description="A run whose scoring and writing move no block for this long fails, publishing nothing (exit 5, "
        "retry later): the cluster has no room for its actors and tasks, e.g. after losing a node. Above the longest "
        "a cluster takes to add a node, and the longest one batch takes to score.",
    )
    ship_code: bool = Field(
        True,
        description="Send this package to the Ray workers with the run (Ray's runtime environment). false: use "
        "the precompute installed in the cluster's image, after checking that every node runs the driver's version.",
    )


class VerifySection(_Section):
    """The checks of a new version against the live one, before the flip (the drift gate)."""

    model_config = ConfigDict(title="[verify]")

    sample: NonNegativeInt = Field(
        10_000,
        description="Keys read from both the new and the live version before the flip, to compare their answers "
        "(0: no comparison).",
    )
    max_drift: PositiveFloat | None = Field(
        None,
        description="Refuse to publish when an output's population stability index (PSI) against the live version "
        "is above this; 0.25 is the usual 'significant shift'. Default: off.",
        examples=[0.25],
    )
    max_changed_fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None,
        description="Refuse to publish when more than this fraction of the sampled keys' answers moved beyond "
        "changed_rel_tol / changed_abs_tol (any output). Default: off.",
        examples=[0.5],
    )
    changed_rel_tol: NonNegativeFloat = Field(
        1e-4,
        description="An answer moved when |new - live| > max(changed_rel_tol * max(|new|, |live|), changed_abs_tol); "
        "the default sees any change beyond float32 rounding.",
        examples=[0.01],
    )
    changed_abs_tol: NonNegativeFloat = Field(1e-5, description="See changed_rel_tol.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.sample == 0:
            limits = [name for name in ("max_drift", "max_changed_fraction") if getattr(self, name) is not None]
            if limits:
                raise Problems(
                    (
                        "sample",
                        f"is 0, so {' and '.join(limits)} would have nothing to compare. Fix: `sample = 10000`, or "
                        f"remove {' and '.join(limits)}",
                    )
                )
        return self


class ServeSection(_Section):
    """The HTTP API (``precompute serve``); docs/serving.md describes every option."""

    model_config = ConfigDict(title="[serve]")

    host: str = Field("127.0.0.1", description="The address to bind.", examples=["0.0.0.0"])
    port: Annotated[int, Field(gt=0, le=65_535), Limit("the highest TCP port")] = Field(
        8000, description="The port to listen on."
    )
    refresh_seconds: PositiveFloat = Field(1.0, description="How often the live version is re-read.")
    max_batch_keys: PositiveInt = Field(1_000, description="Keys per POST /predict (413 above).")
    max_key_bytes: Annotated[int, Field(gt=0, le=MAX_KEY_BYTES), Limit("the store's limit")] = Field(
        MAX_KEY_BYTES, description=f"The longest key, in bytes (414 above; the store's own limit is {MAX_KEY_BYTES})."
    )
    max_body_bytes: PositiveInt = Field(
        1_048_576, description="The largest POST body (413 above, also without Content-Length)."
    )
    fallback: Fallback = Field(
        "off",
        description='Score misses with the model in the API process: "off", "on" (any miss that decodes to '
        'features) or "store-down" (only when the store read failed). PRECOMPUTE_FALLBACK overrides it.',
    )
    deadline_ms: PositiveFloat = Field(200.0, description="Each request's latency budget, store read included.")
    deadline_default: dict[str, float] | None = Field(
        None,
        min_length=1,
        description='Answered (source "default") instead of a 503 when the model is late: output name -> number.',
        examples=[{"weight_pounds": 7.0}],
    )
    batch_max_size: PositiveInt = Field(256, description="The most online requests scored in one model call.")
    batch_max_wait_ms: NonNegativeFloat = Field(
        0.0, description="How long a batch waits to fill; 0: a batch is what queued while the model was busy."
    )
    batch_target_ms: PositiveFloat | None = Field(
        None,
        description="The adaptive batch limit keeps one model call under this; below deadline_ms. "
        "Default: 50, or half of deadline_ms when that is less.",
        examples=[50.0],
    )
    batch_policy: BatchPolicy = Field(
        "aimd", description='How the batch limit adapts: "aimd", "fit" or "fixed" (batch_max_size).'
    )
    max_pending: PositiveInt = Field(4_096, description="Online requests queued; beyond, 503 at once.")
    write_back: bool = Field(False, description="Write online answers into the live version.")
    write_back_ttl_seconds: PositiveFloat | None = Field(
        None,
        description="A written-back answer reads as absent (and is scored again) after this; needs write_back. "
        "Default: never.",
        examples=[3600.0],
    )
    cache_bytes: NonNegativeInt = Field(64 * 1024 * 1024, description="The hot-key cache's size; 0 turns it off.")
    negative_ttl_seconds: NonNegativeFloat = Field(
        2.0, description="How long a key known absent is answered 404 from memory; 0 turns the negative cache off."
    )
    metrics: bool = Field(True, description="Serve /metrics and time the hot path; false turns both off.")
    access_log: bool = Field(False, description="uvicorn's per-request log (it halves throughput).")
    loop: EventLoop = Field(
        "auto",
        description='The event loop: "uvloop" (the fastest for single-key lookups), "asyncio" (Python\'s own), or '
        '"auto" (uvloop where it is installed). uvloop accepts one new connection per turn of the loop, so when '
        'the server is saturated, clients that open new connections wait; pick "asyncio" for clients that do, '
        "such as batch jobs that POST thousands of keys. See docs/serving.md.",
    )
    log_format: LogFormat = Field("json", description='"json" (one object a line) or "text".')
    auth: Auth = Field(
        "off",
        description='"off", "api-key" (X-API-Key header) or "bearer" (Authorization: Bearer); tokens '
        "come from the environment variable auth_tokens_env, never from this file.",
    )
    auth_tokens_env: str = Field(
        "PRECOMPUTE_API_TOKENS", description="The environment variable that holds the accepted tokens, comma-separated."
    )
    shutdown_seconds: PositiveFloat = Field(10.0, description="How long in-flight requests get on SIGTERM.")
    record_misses: bool = Field(
        False,
        description="Count the off-grid keys answered online and add the counts to the store every "
        "misses_flush_seconds, for a run with [space] include_misses; needs the fallback on.",
    )
    misses_flush_seconds: PositiveFloat = Field(
        5.0, description="How often the counted misses are added to the store (and once more at shutdown)."
    )
    misses_max_keys: PositiveInt = Field(
        100_000,
        description="The most distinct misses the store keeps; a new key beyond them is refused (and counted in "
        'precompute_misses_total{outcome="refused"}).',
    )
    workers: PositiveInt | Auto = Field(
        1,
        description='Worker processes answering on the one port; "auto": one per core this process may use. '
        "Each worker holds its own caches (and, with the fallback on, its own copy of the model).",
        examples=[4, "auto"],
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[str | None, str]] = []
        if self.target_ms >= self.deadline_ms:
            problems.append(
                (
                    "batch_target_ms",
                    f"{self.target_ms} must be below deadline_ms ({self.deadline_ms}), or no batch could finish "
                    f"in time. Fix: `batch_target_ms = {self.deadline_ms / 4:g}`",
                )
            )
        if self.record_misses and self.fallback == "off":
            problems.append(
                (
                    "record_misses",
                    'counts the keys answered online, but fallback = "off" answers none. Fix: add '
                    '`fallback = "on"`, or remove record_misses',
                )
            )
        if self.write_back_ttl_seconds is not None and not self.write_back:
            problems.append(
                (
                    "write_back_ttl_seconds",
                    "set, but nothing is written back. Fix: add `write_back = true`, or remove write_back_ttl_seconds",
                )
            )
        if problems:
            raise Problems(*problems)
        return self

    @property
    def target_ms(self) -> float:
        """``batch_target_ms``, or its default: 50 ms, or half the deadline when that is less."""
        return float(self.batch_target_ms or min(50.0, self.deadline_ms / 2))


class RefreshSection(_Section):
    """``precompute refresh``: changed entities re-scored into the live version (docs/refresh.md)."""

    model_config = ConfigDict(title="[refresh]")

    batch_max_size: PositiveInt = Field(1_024, description="The most records scored in one model call.")
    window_ms: NonNegativeFloat = Field(
        20.0,
        description="How long a batch waits to fill once its first record arrived; 0: a batch is what is there.",
    )
    block_ms: PositiveInt = Field(
        1_000, description="How long one read of a Redis Stream waits for an entry (XREADGROUP BLOCK)."
    )
    backlog_max: PositiveInt = Field(
        100_000,
        description="Answers kept in memory for a version a concurrent `precompute run` is still loading; when "
        "full, reading pauses until the run has loaded.",
    )
    consumer: str = Field(
        "",
        description="The consumer name in a Redis Stream's consumer group. Default: <hostname>-<pid>; give a "
        "fixed name so that a restarted refresh re-reads the entries it had not acknowledged.",
        examples=["refresh-1"],
    )
    record_seconds: PositiveFloat = Field(
        1.0, description="How often the refreshed counts and the watermark are written into the version record."
    )


class ConfigFile(_Section):
    """A whole ``precompute.toml``."""

    model_config = ConfigDict(
        title="precompute.toml",
        json_schema_extra={"description": "The configuration of a precompute job and its API (precompute.toml)."},
    )

    model: ModelSection = Field(description="The TensorFlow model that is scored.")
    space: SpaceSection = Field(
        description='The request space: a grid of features (type = "grid", the default) or a table of known '
        'entities (type = "table").'
    )
    store: StoreSection = Field(default_factory=StoreSection, description="Where versions are written and read.")
    run: RunSection = Field(default_factory=RunSection, description="The batch job: Ray, the actors, the load.")
    verify: VerifySection = Field(
        default_factory=VerifySection, description="The drift gate: the new version against the live one."
    )
    serve: ServeSection = Field(default_factory=ServeSection, description="The HTTP API (precompute serve).")
    refresh: RefreshSection = Field(
        default_factory=RefreshSection, description="Changed entities re-scored into the live version."
    )


class _TomlSchema(GenerateJsonSchema):
    """JSON Schema as TOML sees it: TOML has no null, so an optional field is one left out (no null, no
    ``default: null``)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def document_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``precompute.toml``, for editors to complete and check the file."""
    schema = ConfigFile.model_json_schema(schema_generator=_TomlSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def closest(name: str, known: list[str]) -> str | None:
    """The known name ``name`` is most likely a misspelling of, if any."""
    found = difflib.get_close_matches(name, known, n=1)
    return found[0] if found else None
