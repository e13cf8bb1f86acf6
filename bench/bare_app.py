"""The baseline for lookup benchmarks: bare Starlette serving the same JSON bodies from a dict.

    python bench/bare_app.py KEYS_FILE PORT [WORKERS]

Each line of KEYS_FILE is a key; the response has the same shape and size as the real API's. With WORKERS
above 1, uvicorn's own process manager runs that many (the baseline of ``precompute serve --workers``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app_for(keys: list[str]) -> Starlette:
    bodies = {
        k: f'{{"key":"{k}","prediction":{{"weight_pounds":7.3125}},"source":"precomputed",'
        f'"model_version":"20261122-000000-abcd"}}'.encode()
        for k in keys
    }

    async def predict(request: Request) -> Response:
        body = bodies.get(request.path_params["key"])
        if body is None:
            return Response(b'{"error":"not found"}', status_code=404, media_type="application/json")
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/predict/{key:path}", predict)])


def app() -> Starlette:
    """The app of one of several workers (uvicorn needs an import string): the keys of BARE_KEYS_FILE."""
    return app_for(Path(os.environ["BARE_KEYS_FILE"]).read_text().split())


if __name__ == "__main__":
    keys_file, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if workers == 1:
        uvicorn.run(
            app_for(Path(keys_file).read_text().split()),
            host="127.0.0.1",
            port=port,
            access_log=False,
            log_level="warning",
        )
    else:
        os.environ["BARE_KEYS_FILE"] = keys_file
        uvicorn.run(
            "bare_app:app",
            factory=True,
            workers=workers,
            host="127.0.0.1",
            port=port,
            access_log=False,
            log_level="warning",
        )
