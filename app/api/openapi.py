"""The served OpenAPI, completed with what every route shares.

FastAPI documents only what a route declares, and documents validation errors as
`application/json`. Here every error response becomes `application/problem+json`
with the `Problem` schema, its `status` and the `code`s the operation can answer,
and the problems every route shares are added where they apply: 403 (a client off
loopback when no token is configured, or a token without the scope), 401 and the
bearer scheme on scoped routes, 413 (the body cap covers every request), 422 where
there is input, 503 where the database is used, and 500."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.api.deps import required_scope, uses_database
from app.api.middleware import SAFE_METHODS
from app.api.problems import CODES_KEY, PROBLEM_JSON, Problem

SECURITY_SCHEME = "bearer"
BACKUP = "/v1/backups/{backup_id}"
CHECKPOINTS = "/v1/hosts/{host}/domains/{domain}/checkpoints"
_BACKUP_ID = {"backup_id": "$response.body#/id"}
_CHECKPOINT = {
    "host": "$request.path.host",
    "domain": "$request.path.domain",
    "name": "$response.body#/name",
}
# What a client can do next with what an operation made (OpenAPI links): the
# (method, path, status) answered -> {link name: (method, path, parameters)}.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/hosts/{host}/domains/{domain}/backups", "202"): {
        "GetBackup": ("get", BACKUP, _BACKUP_ID),
        "CancelBackup": ("post", f"{BACKUP}/cancel", _BACKUP_ID),
        "FinishBackup": ("post", f"{BACKUP}/finish", _BACKUP_ID),
        "GetChain": ("get", f"{BACKUP}/chain", _BACKUP_ID),
        "StartRestore": ("post", f"{BACKUP}/restores", _BACKUP_ID),
        "DeleteBackup": ("delete", BACKUP, _BACKUP_ID),
    },
    ("post", f"{BACKUP}/restores", "202"): {
        "GetRestore": ("get", "/v1/restores/{restore_id}", {"restore_id": "$response.body#/id"}),
    },
    ("post", CHECKPOINTS, "201"): {
        "GetCheckpoint": ("get", f"{CHECKPOINTS}/{{name}}", _CHECKPOINT),
        "DeleteCheckpoint": ("delete", f"{CHECKPOINTS}/{{name}}", _CHECKPOINT),
    },
}
_SCHEMAS = "#/components/schemas/"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(spec, app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(spec: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template=_SCHEMAS + "{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    components["securitySchemes"] = {
        SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": "A configured token"}
    }
    # Routes of included routers are reached through their contexts (full path).
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                _complete_operation(spec["paths"][context.path_format][method.lower()], route)
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    _add_links(spec["paths"])
    return spec


def _add_links(paths: dict[str, Any]) -> None:
    for (method, path, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue  # a route another build leaves out
        response["links"] = {
            name: {"operationId": paths[to_path][to_method]["operationId"], "parameters": params}
            for name, (to_method, to_path, params) in links.items()
            if to_method in paths.get(to_path, {})
        }


def _shared_codes(operation: dict[str, Any], route: APIRoute) -> dict[int, list[str]]:
    shared = {
        403: ["forbidden"],
        413: ["payload-too-large"],
        421: ["misdirected-request"],
        500: ["internal-error"],
    }
    if (route.methods or set()) - SAFE_METHODS:
        shared[415] = ["unsupported-media-type"]
    if required_scope(route.dependant) is not None:
        shared[401] = ["unauthorized"]
    if operation.get("parameters") or operation.get("requestBody"):
        shared[422] = ["invalid-request"]
    if uses_database(route.dependant):
        shared[503] = ["service-unavailable"]
    return shared


def _complete_operation(operation: dict[str, Any], route: APIRoute) -> None:
    scope = required_scope(route.dependant)
    if scope is not None:
        operation["security"] = [{SECURITY_SCHEME: []}]
        described = operation.get("description", "")
        operation["description"] = f"{described}\n\nScope: `{scope}`.".strip()
    responses: dict[str, Any] = operation.setdefault("responses", {})
    _restore_examples(responses, route)
    for shared_status, codes in _shared_codes(operation, route).items():
        entry = responses.setdefault(str(shared_status), {"content": {PROBLEM_JSON: {}}})
        if _is_problem(entry):
            entry.setdefault(CODES_KEY, [])
            entry[CODES_KEY] += [code for code in codes if code not in entry[CODES_KEY]]
    for status, entry in responses.items():
        if status.isdigit() and int(status) >= 400 and _is_problem(entry):
            _document_problem(int(status), entry)


def _restore_examples(responses: dict[str, Any], route: APIRoute) -> None:
    """The answer examples as the route declares them: FastAPI's encoder drops
    every null from the document, and a field that is null is still sent."""
    for status, declared in route.responses.items():
        for media_type, content in declared.get("content", {}).items():
            if "example" in content:
                responses[str(status)]["content"][media_type]["example"] = content["example"]


def _is_problem(entry: dict[str, Any]) -> bool:
    """An error response that is a problem: declared so, or FastAPI's validation
    error (which the service renders as a problem). `/readyz`'s 503 is not one."""
    content: dict[str, Any] = entry.get("content", {})
    if PROBLEM_JSON in content:
        return True
    schema = content.get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _document_problem(status: int, entry: dict[str, Any]) -> None:
    codes: list[str] = entry.pop(CODES_KEY, [])
    constraint: dict[str, Any] = {"type": "object", "properties": {"status": {"const": status}}}
    if codes:
        constraint["properties"]["code"] = {"enum": codes}
        entry["description"] = "Problem: " + ", ".join(f"`{code}`" for code in codes)
    else:
        entry["description"] = "Problem"
    schema = {"allOf": [{"$ref": _SCHEMAS + "Problem"}, constraint]}
    entry["content"] = {PROBLEM_JSON: {"schema": schema}}
