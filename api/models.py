"""The endpoints that answer for every model an app serves: ``/healthz``, ``/readyz``, ``/metrics``,
``/openapi.json``, ``GET /models`` (the served models, their live versions and spaces), and the 404s of a
model name nobody serves.

With one model, ``/readyz`` is that model's readiness as it always was; with several it is ready only when
every model is, and its body has each model's state under ``models``, with the error naming the model(s)
that are not ready.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from precompute.api.endpoints import Operations
from precompute.api.metrics import CONTENT_TYPE
from precompute.api.openapi import describe_served
from precompute.served import Served
from precompute.space import GridSpace, Space

if TYPE_CHECKING:
    from precompute.api.app import Components
    from precompute.api.endpoints import Endpoint
    from precompute.api.workers import Workers

State = dict[str, Any]


class Catalogue:
    """The app-wide endpoints over ``models`` (one :class:`Components` each, in the order served)."""

    def __init__(self, served: Served, models: Sequence[Components], workers: Workers | None = None) -> None:
        self.served = served
        self.models = list(models)
        self.names = [parts.config.name for parts in models]
        self.operations = {
            parts.config.name: Operations(parts.config, parts.live, parts.lookup, parts.metrics, parts.online)
            for parts in models
        }
        self.workers = workers
        self.worker_header = workers.header if workers is not None else None  # X-Worker: which one answered
        self.openapi_body = json.dumps(describe_served(served)).encode()

    # -- readiness ------------------------------------------------------------------------------------

    def readiness(self) -> State:
        """This process's readiness: the one model's as it was, or every model's under ``models``."""
        if not self.served.several:
            return self.operations[self.names[0]].readiness()
        states = {name: operations.readiness() for name, operations in self.operations.items()}
        waiting = [name for name, state in states.items() if not state["ready"]]
        state: State = {"ready": not waiting, "models": states}
        if waiting:
            state["error"] = "; ".join(f"model {name}: {states[name].get('error', 'not ready')}" for name in waiting)
        return state

    def models_ready(self) -> dict[str, bool]:
        """Each model's readiness in this process (what api/workers.py publishes for ``precompute_ready``)."""
        return {name: bool(operations.readiness()["ready"]) for name, operations in self.operations.items()}

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        state = self.readiness() if self.workers is None else self.workers.state()
        return JSONResponse(state, status_code=200 if state["ready"] else 503, headers=self.worker_header)

    # -- the rest -------------------------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        body = self.models[0].metrics.render()  # one registry: every model's samples
        return Response(body, media_type=CONTENT_TYPE, headers=self.worker_header)

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_body, media_type="application/json")

    async def listing(self, request: Request) -> Response:
        """``GET /models``: each served model, as clients and operators need to find it."""
        listed = []
        for parts in self.models:
            config = parts.config
            listed.append(
                {
                    "name": config.name,
                    "live_version": parts.live.version,
                    "ready": bool(self.operations[config.name].readiness()["ready"]),
                    "space": describe_space(config.space),
                    "store": config.store_url.redacted(),
                    "fallback": parts.lookup.fallback,
                    "predict": f"/models/{config.name}/predict",
                }
            )
        return JSONResponse({"models": listed})

    def by_name(self, endpoints: Mapping[str, Sequence[Endpoint]], which: int) -> Endpoint:
        """The endpoint that answers with model ``<name>``'s ``endpoints[name][which]``."""
        chosen = {name: found[which] for name, found in endpoints.items()}.get

        async def endpoint(request: Request) -> Response:
            answer = chosen(request.path_params["name"])
            if answer is None:
                return self.unknown_name(request.path_params["name"])
            return await answer(request)

        return endpoint

    def unknown_name(self, name: str) -> Response:
        return JSONResponse(
            {"error": f"no model named {name!r} is served; served: {', '.join(self.names)}", "models": self.names},
            status_code=404,
        )

    async def unknown(self, request: Request) -> Response:
        """A path under ``/models/<name>`` that no route took: an unknown name (404 with the served ones), or
        a known model's path with a method it does not answer (405) or that does not exist (404)."""
        name, rest = request.path_params["name"], request.path_params["rest"]
        if name not in self.names:
            return self.unknown_name(name)
        if rest == "/predict" or rest.startswith("/predict/"):
            allowed = "GET, POST" if rest == "/predict" else "GET"
            return JSONResponse({"error": "Method Not Allowed"}, status_code=405, headers={"Allow": allowed})
        return JSONResponse({"error": "Not Found"}, status_code=404)

    async def no_default(self, request: Request) -> Response:
        """``/predict...`` with several models: which one is meant cannot be guessed."""
        paths = [f"/models/{name}/predict" for name in self.names]
        return JSONResponse(
            {"error": f"several models are served: ask one of {', '.join(paths)}", "models": self.names},
            status_code=404,
        )


def describe_space(space: Space) -> dict[str, Any]:
    """A space as ``GET /models`` lists it: its kind, and what its keys look like."""
    if isinstance(space, GridSpace):
        return {
            "type": "grid",
            "size": space.size,
            "key_template": space.template.text,
            "features": space.feature_names,
        }
    return {"type": "table", "key_column": space.key_column, "features": sorted(space.columns)}
