"""Path and query parameters that name something: exact, or 422.

A name with a trailing newline or a control character is refused here rather
than looked up (libvirt trims some of them and would find the domain)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from app.names import DOMAIN_REF_REGEX, NAME_REGEX

HostPath = Annotated[str, Path(pattern=NAME_REGEX, description="A registered host's name.")]
DomainPath = Annotated[
    str, Path(pattern=DOMAIN_REF_REGEX, max_length=255, description="A domain name or UUID.")
]
CheckpointPath = Annotated[str, Path(pattern=NAME_REGEX)]
HostQuery = Annotated[str | None, Query(pattern=NAME_REGEX)]
DomainQuery = Annotated[
    str | None, Query(pattern=DOMAIN_REF_REGEX, max_length=255, description="domain name or UUID")
]
