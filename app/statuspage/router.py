"""Routes of the status page; none is in the OpenAPI schema. The page shells
need no token (they hold no data); the fragments need the `read` scope."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from app.api.deps import HostsDep, ReadDep, SessionDep, StateDep
from app.backups import events
from app.db.base import utcnow
from app.statuspage import display, views

router = APIRouter(include_in_schema=False)

_templates = Environment(
    loader=PackageLoader("app.statuspage", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)
_templates.globals.update(
    ago=display.ago, stale=display.stale, progress=display.progress, size=display.size
)
# Everything the page loads comes from the service itself: the browser enforces it.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_STATIC = {"status.js": "text/javascript", "status.css": "text/css"}


def _html(template: str, **context: Any) -> HTMLResponse:
    body = _templates.get_template(template).render(now=utcnow(), **context)
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
    return HTMLResponse(body, headers=headers)


@router.get("/")
async def overview_page() -> HTMLResponse:
    return _html("overview.html")


@router.get("/ui/hosts/{host}/domains/{domain}")
async def domain_page(host: str, domain: str) -> HTMLResponse:
    return _html("domain.html", host=host, domain=domain)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:  # only the files listed: no path ever reaches the file system
        return Response(status_code=404)
    body = (resources.files("app.statuspage") / "static" / name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/ui/fragments/overview")
async def overview_fragment(
    _: ReadDep, state: StateDep, hosts: HostsDep, session: SessionDep
) -> HTMLResponse:
    # Read first: the page follows the event stream from here, so it misses nothing
    # that changes while the rest is read (an event seen twice changes nothing).
    after = await events.latest_id(state.database)
    page = await views.overview(session, hosts)
    return _html("overview_fragment.html", page=page, last_event_id=after)


@router.get("/ui/fragments/hosts/{host}/domains/{domain}")
async def domain_fragment(
    host: str, domain: str, _: ReadDep, state: StateDep, hosts: HostsDep, session: SessionDep
) -> HTMLResponse:
    after = await events.latest_id(state.database)
    page = await views.domain_page(session, hosts, host, domain)
    return _html("domain_fragment.html", page=page, last_event_id=after)
