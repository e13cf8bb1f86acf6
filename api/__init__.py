"""The lookup API: a Starlette app over a store reader, with an optional online fallback to the model
(docs/serving.md)."""

from precompute.api.app import create_app

__all__ = ["create_app"]
