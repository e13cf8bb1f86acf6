"""The OpenAPI 3.0 description served at ``/openapi.json``, written by hand (Starlette has no generator) and
completed from the configuration: the feature names of a grid become the query parameters of
``GET /predict``. The fuzz test (tests/api/test_fuzz.py) generates requests from it with schemathesis and
checks every response against it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from precompute.config import Config
from precompute.space import Categorical, GridSpace, Range

if TYPE_CHECKING:
    from precompute.served import Served


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def describe(config: Config) -> dict[str, Any]:
    serve = config.serve
    space = config.space
    feature_params: list[dict[str, Any]] = []
    key_schema: dict[str, Any] = {"type": "string"}
    if isinstance(space, GridSpace):
        # The shape of a key and of each feature. The API answers any string (400 when malformed, 404 when
        # outside the space), but a schema that says "any string" gives clients nothing and the fuzz test no
        # keys that decode; with the shapes, valid cases decode (on and off the grid) and invalid ones do not.
        patterns = {dim.name: _pattern(dim) for dim in space.dimensions}
        key_pattern = re.escape(space.template.literals[0]) + "".join(
            patterns[name] + re.escape(literal)
            for name, literal in zip(space.template.fields, space.template.literals[1:], strict=True)
        )
        key_schema = {"type": "string", "pattern": f"^{key_pattern}$"}
        for dim in space.dimensions:
            schema: dict[str, Any] = (
                {"type": "string", "enum": list(dim.values)}
                if isinstance(dim, Categorical)
                else {"type": "string", "pattern": f"^{patterns[dim.name]}$"}
            )
            feature_params.append({"name": dim.name, "in": "query", "required": True, "schema": schema})
    errors = {
        "400": _error("Malformed key, features or body."),
        "401": _error("Auth is on and the token is missing or wrong."),
        "404": _error("The key is outside the space, or not in the live version (and no online answer)."),
        "422": _error("The model returned a non-finite prediction for these features."),
        "503": _error("The store is unavailable, nothing is published, or the model missed the deadline."),
    }
    security: list[dict[str, list[str]]] = [{"token": []}] if serve.auth != "off" else []
    scheme = (
        {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        if serve.auth == "api-key"
        else {"type": "http", "scheme": "bearer"}
    )
    predict_key = {
        "summary": "Look one key up (online answer on a miss when the fallback is on)",
        "parameters": [
            {
                "name": "key",
                "in": "path",
                "required": True,
                "schema": key_schema,
                "example": space.key_for_id(0) if isinstance(space, GridSpace) else "entity-1",
            }
        ],
        "responses": {
            "200": {
                "description": "The prediction.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
            },
            **errors,
            "414": _error(f"The key is longer than {serve.max_key_bytes} bytes."),
        },
    }
    predict_batch = {
        "summary": "Look many keys (or feature sets) up in one version",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {
                                "type": "object",
                                "required": ["keys"],
                                "properties": {
                                    "keys": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "maxItems": serve.max_batch_keys,
                                    }
                                },
                                "additionalProperties": False,
                            },
                            {
                                "type": "object",
                                "required": ["features"],
                                "properties": {
                                    "features": {
                                        "type": "array",
                                        "items": {"type": "object"},
                                        "maxItems": serve.max_batch_keys,
                                    }
                                },
                                "additionalProperties": False,
                            },
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "One result per requested item, in order.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}},
            },
            "400": errors["400"],
            "401": errors["401"],
            "413": _error(f"More than {serve.max_batch_keys} items or a body over {serve.max_body_bytes} bytes."),
            "415": _error("The body is not sent as Content-Type: application/json."),
            "503": errors["503"],
        },
    }
    plain = {"text/plain": {"schema": {"type": "string"}}}
    description: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "precompute", "version": "1", "description": "Precomputed predictions, online fallback."},
        "paths": {
            "/predict/{key}": {"get": predict_key},
            "/predict": {
                "get": {
                    "summary": "Look up by raw feature values, snapped to the grid",
                    "parameters": feature_params,
                    "responses": predict_key["responses"],
                },
                "post": predict_batch,
            },
            "/healthz": {
                "get": {"summary": "The process is up", "security": [], "responses": {"200": {"description": "Up."}}}
            },
            "/readyz": {
                "get": {
                    "summary": "The store answers and a version is live (or the fallback can answer)",
                    "security": [],
                    "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready."}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Text format 0.0.4.", "content": plain}, "401": errors["401"]},
                }
            },
        },
        "components": {
            "schemas": {
                "Prediction": {
                    "type": "object",
                    "required": ["key", "prediction", "source", "model_version"],
                    "properties": {
                        "key": {"type": "string"},
                        "prediction": {"type": "object", "additionalProperties": {"type": "number"}},
                        "source": {"type": "string", "enum": ["precomputed", "online", "default"]},
                        "model_version": {"type": "string", "nullable": True},
                    },
                },
                "BatchResult": {
                    "type": "object",
                    "required": ["model_version", "results"],
                    "properties": {
                        "model_version": {"type": "string", "nullable": True},
                        "results": {"type": "array", "items": {"type": "object", "required": ["status"]}},
                    },
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            },
            "securitySchemes": {"token": scheme} if serve.auth != "off" else {},
        },
    }
    if security:
        description["security"] = security
    return description


def _pattern(dim: Categorical | Range) -> str:
    if isinstance(dim, Categorical):
        return "(" + "|".join(re.escape(v) for v in dim.values) + ")"
    return r"(-?[0-9]{1,3}(\.[0-9]{1,3})?)"


def describe_served(served: Served) -> dict[str, Any]:
    """The description of an app serving ``served``: with one model, :func:`describe` plus ``/models`` and
    the model's ``/models/<name>/...`` paths; with several, the operations' paths, ``/models``, and each
    model's predictions under ``/models/<name>/`` (no ``/predict``).

    Each model has its own literal paths rather than one ``/models/{name}/...`` with ``name`` an enum: the
    models' keys, features and limits differ, and a path shared by all could describe none of them."""
    first = served.models[0]
    description = describe(first)
    paths: dict[str, Any] = description["paths"]
    predictions = {path: paths.pop(path) for path in PREDICTION_PATHS}
    kept = dict(paths)
    paths.clear()
    if not served.several:
        paths.update(predictions)
    paths.update(kept)
    names = [config.name for config in served.models]
    paths["/models"] = {
        "get": {
            "summary": "The models served, their live versions and spaces",
            "responses": {
                "200": {
                    "description": "One entry per model, in the order served.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Models"}}},
                },
                "401": _error("Auth is on and the token is missing or wrong."),
            },
        }
    }
    for config in served.models:
        own = predictions if config is first else {path: describe(config)["paths"][path] for path in PREDICTION_PATHS}
        for path, operations in own.items():
            paths[f"/models/{config.name}{path}"] = {
                method: {**operation, "summary": f"{config.name}: {operation['summary']}", "tags": [config.name]}
                for method, operation in operations.items()
            }
    description["components"]["schemas"]["Models"] = {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "live_version", "ready", "space", "store", "fallback", "predict"],
                    "properties": {
                        "name": {"type": "string", "enum": names},
                        "live_version": {"type": "string", "nullable": True},
                        "ready": {"type": "boolean"},
                        "space": {"type": "object", "required": ["type"]},
                        "store": {"type": "string"},
                        "fallback": {"type": "string", "enum": ["off", "on", "store-down"]},
                        "predict": {"type": "string"},
                    },
                },
            }
        },
    }
    if served.several:
        description["info"]["description"] += f" Models: {', '.join(names)}."
    return description


#: The paths of one model's predictions in :func:`describe`.
PREDICTION_PATHS = ("/predict/{key}", "/predict")
