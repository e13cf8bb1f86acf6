"""Fuzzing the HTTP API from its own OpenAPI description (schemathesis), in-process, over the in-memory
store with a few rows published and the online fallback on (the example model): no input may produce a
5xx (the store never fails here), and every response must match the description (status, content type,
body schema)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from precompute.api import create_app
from precompute.api.app import create_served_app
from precompute.model import fingerprint
from precompute.served import Served
from tests.api.conftest import memory_config, publish
from tests.precompute.conftest import EXAMPLE

ROWS = {
    "True:25:Single(1):39": b'{"weight_pounds":7.31}',
    "False:30:Twins(2):36": b'{"weight_pounds":5.5}',
    "Unknown:40:Triplets(3):30": b'{"weight_pounds":3.25}',
}


@pytest.fixture(scope="module")
def fuzzed_app() -> Iterator[Starlette]:
    config = memory_config(fallback="on", deadline_ms=10_000, batch_target_ms=1_000)
    publish(config, ROWS, {"model": fingerprint(EXAMPLE / "model")})
    app = create_app(config)
    yield app
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # schemathesis started the app's lifespan; stop it (model thread, store) now


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: Starlette) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


CASES = [
    ("/predict/{key}", "GET", GenerationMode.POSITIVE),
    ("/predict/{key}", "GET", GenerationMode.NEGATIVE),
    ("/predict", "GET", GenerationMode.POSITIVE),
    ("/predict", "GET", GenerationMode.NEGATIVE),
    ("/predict", "POST", GenerationMode.POSITIVE),
    ("/predict", "POST", GenerationMode.NEGATIVE),
    ("/healthz", "GET", GenerationMode.POSITIVE),
    ("/readyz", "GET", GenerationMode.POSITIVE),
    ("/metrics", "GET", GenerationMode.POSITIVE),
    ("/models", "GET", GenerationMode.POSITIVE),
    ("/models/precompute/predict/{key}", "GET", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_no_input_makes_the_api_fail(api_schema: Any, path: str, method: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()


@pytest.fixture(scope="module")
def several_schema() -> Iterator[Any]:
    """Two models on their own stores (the fallback off: no model to load), described and fuzzed together."""
    configs = []
    for name in ("a", "b"):
        config = memory_config()
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=name))
        publish(config, ROWS)
        configs.append(config)
    served = Served(tuple(configs), configs[0].serve, tuple(config.source for config in configs))
    yield schemathesis.openapi.from_asgi("/openapi.json", create_served_app(served))
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


SEVERAL = [
    ("/models/a/predict/{key}", "GET", GenerationMode.POSITIVE),
    ("/models/b/predict/{key}", "GET", GenerationMode.NEGATIVE),
    ("/models/a/predict", "GET", GenerationMode.POSITIVE),
    ("/models/b/predict", "POST", GenerationMode.POSITIVE),
    ("/models", "GET", GenerationMode.POSITIVE),
    ("/readyz", "GET", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize(("path", "method", "mode"), SEVERAL, ids=[f"{m} {p} {g.value}" for p, m, g in SEVERAL])
def test_no_input_makes_several_models_fail(several_schema: Any, path: str, method: str, mode: GenerationMode) -> None:
    operation = several_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
