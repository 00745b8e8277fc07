"""The OpenAPI 3.1 document, built from the route table and the request and response models.

Nothing here is written by hand twice: parameters come from the `Params` models that validate them,
bodies from the `Answer` models the handlers fill, and every nested schema (`$defs` in pydantic's output)
is hoisted to `components/schemas`, so every `$ref` resolves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.api.models import Error
from services.api.params import Headers, NoHeaders, NoQuery, Params

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
_BODY_STATUSES = ("200", "206")


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: a value of this route's 200 body that is a parameter of another operation."""

    operation: str  # the target's operationId
    parameter: str
    expression: str  # a runtime expression, e.g. $response.body#/id


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    summary: str
    responses: dict[str, str]  # status -> description; all but 200 and 206 answer an Error
    body: type[BaseModel] | None = None  # the 200 (and 206) body's model; None for bytes
    content_type: str = "application/json"
    query: type[Params] = NoQuery
    path_params: type[Params] | None = None
    headers: type[Headers] = NoHeaders
    response_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # status -> header -> description
    links: tuple[Link, ...] = ()
    public: bool = False  # answered without a token (nothing in it is secret)


def document(routes: tuple[Route, ...], *, token: bool) -> dict[str, Any]:
    """The api's document; `token`: whether requests need one (then 401 is an answer, and `token` a parameter)."""
    bodies = [r.body for r in routes if r.body is not None]
    models: set[type[BaseModel]] = {*bodies, Error}
    keys, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths = {route.path: {"get": _operation(route, keys, schemas, token)} for route in routes}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Vigil api",
            "version": "1",
            "description": "Events, proof clips and the fleet's state. "
            "Query parameters not listed for an operation are refused with 400.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }
    if token:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "vigil_session", "description": "from POST /login"},
        }
        doc["security"] = [{"bearer": []}, {"session": []}]
    return doc


def _operation(route: Route, keys: dict[Any, Any], schemas: dict[str, Any], token: bool) -> dict[str, Any]:
    parameters = _parameters(route.query, "query", schemas) + _parameters(route.headers, "header", schemas)
    if route.path_params is not None:
        parameters = _parameters(route.path_params, "path", schemas) + parameters
    statuses = dict(route.responses)
    statuses.setdefault("400", "a bad or unknown parameter")
    if token and not route.public:
        statuses["401"] = "no valid token"
    responses: dict[str, Any] = {}
    for status, description in sorted(statuses.items()):
        entry: dict[str, Any] = {"description": description}
        if status in _BODY_STATUSES:
            schema = keys[(route.body, "serialization")] if route.body is not None else _bytes(route.content_type)
            entry["content"] = {route.content_type: {"schema": schema}}
            if status == "200" and route.links:
                entry["links"] = {
                    f"{link.operation}": {"operationId": link.operation, "parameters": {link.parameter: link.expression}}
                    for link in route.links
                }
        else:
            entry["content"] = {"application/json": {"schema": keys[(Error, "serialization")]}}
        headers = dict(route.response_headers.get(status, {}))
        if status == "401":
            headers["WWW-Authenticate"] = "how to authenticate: Bearer"
        if headers:
            entry["headers"] = {
                name: {"description": text, "required": True, "schema": {"type": "string"}} for name, text in headers.items()
            }
        responses[status] = entry
    operation = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "parameters": parameters,
        "responses": responses,
    }
    if token and route.public:
        operation["security"] = []  # overrides the document's: no token needed
    return operation


def _bytes(content_type: str) -> dict[str, Any]:
    # OpenAPI 3.1 describes raw bytes by their media type rather than with `format: binary`.
    return {"type": "string", "contentMediaType": content_type}


def _parameters(model: type[BaseModel], where: str, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, by_alias=True)
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", "")
        out.append(
            {
                "name": name,
                "in": where,
                "required": name in required or where == "path",
                "description": description,
                "schema": _plain(prop),
            }
        )
    return out


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's wrapping: a parameter is absent rather than null, so an
    optional one's `anyOf [..., null]` is just its type, and its null default goes."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    if prop.get("default", "unset") is None:
        del prop["default"]
    branches = prop.get("anyOf")
    if branches is not None:
        branches = [b for b in branches if b != {"type": "null"}]
        del prop["anyOf"]
        if len(branches) == 1:
            prop = branches[0] | prop
        else:
            prop["anyOf"] = branches
    return prop
