"""``GET /openapi.json`` (``gateway/http/openapi.py``): valid OpenAPI 3.1, and exactly the
routes the app serves, so that it cannot go stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from gateway.http.app import build_app
from gateway.http.front import Workers, build_front_app
from gateway.http.openapi import openapi
from gateway.ops.config import Config
from tests.conftest import GatewayFactory

METHODS = {"get", "post", "put", "patch", "delete", "options"}


def _served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route; HEAD comes with each GET from aiohttp."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and path is not None:
            routes.add((route.method.lower(), str(path)))
    return routes


def _described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }


@pytest.mark.parametrize("auth", ["none", "api-key"])
def test_the_description_is_valid_and_matches_the_router(auth: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k" * 40 + "\n")
    extra: dict[str, Any] = {"api_keys_file": keys} if auth == "api-key" else {}
    config = Config(no_tls=True, auth=auth, **extra)  # type: ignore[arg-type]
    document = openapi(config)
    validate(document)  # OpenAPI 3.1, every $ref resolved
    assert _described(document) == _served(build_app(config))
    # The front of media workers serves the same routes, answered here or by a worker.
    assert _served(build_front_app(config, Workers([]))) == _served(build_app(config))
    guarded = document["paths"]["/offer"]["post"]
    public = document["paths"]["/health"]["get"]
    if auth == "none":
        assert "security" not in guarded
    else:
        assert guarded["security"] == [{"bearer": []}]
        assert "401" in guarded["responses"]
        assert "security" not in public


async def test_it_is_served_without_a_credential(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    assert "/offer" in document["paths"]
