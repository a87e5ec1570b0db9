"""Between the builders' plain dicts and kubespawner's kubernetes_asyncio models.

`objects` builds dicts in the API's shape; kubespawner sends models (and hands them to
``modify_pod_hook``); the guard judges dicts again. Both ways go through the client's own
public (de)serialiser, so a dict and its model say exactly the same thing.
"""

from __future__ import annotations

import json

from kubernetes_asyncio.client import ApiClient

#: the client's serialiser; no connection (``ApiClient()`` would want an event loop)
_SERIALIZER = ApiClient.__new__(ApiClient)


class _Body:
    """What `ApiClient.deserialize` reads: a response's JSON text."""

    def __init__(self, obj: dict):
        self.data = json.dumps(obj)


def to_model(obj: dict, kind: str):
    """``{"kind": "Pod", ...}`` as a ``V1Pod`` (``kind`` is the model's name)."""
    return _SERIALIZER.deserialize(_Body(obj), kind)  # type: ignore[arg-type]  # it reads .data only


def to_dict(model) -> dict:
    """A model (or a dict with models inside) as the API's camelCase dict."""
    return _SERIALIZER.sanitize_for_serialization(model)
