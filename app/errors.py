"""The one error hierarchy of the service.

Every expected failure is an `AppError` with an HTTP status and a stable `code`
(API.md, Conventions); the API renders it as RFC 9457 problem+json. Nothing here
maps a broad builtin such as ValueError to a status.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(AppError):
    status = 404
    title = "Not found"


class HostNotFound(NotFound):
    code = "host-not-found"
    title = "Host not found"


class DomainNotFound(NotFound):
    code = "domain-not-found"
    title = "Domain not found"


class BackupNotFound(NotFound):
    code = "backup-not-found"
    title = "Backup not found"


class RestoreNotFound(NotFound):
    code = "restore-not-found"
    title = "Restore not found"


class PolicyNotFound(NotFound):
    code = "policy-not-found"
    title = "Policy not found"


class CheckpointNotFound(AppError):
    """A named checkpoint that does not exist (404 when addressed, 409 as a base)."""

    status = 404
    code = "checkpoint-not-found"
    title = "Checkpoint not found"


class BaseCheckpointMissing(CheckpointNotFound):
    """An incremental backup's base checkpoint does not exist (or is not usable)."""

    status = 409


class InvalidRequest(AppError):
    status = 422
    code = "invalid-request"
    title = "Invalid request"


class UnknownDisk(AppError):
    status = 422
    code = "unknown-disk"
    title = "Unknown disk"


class PathNotAllowed(AppError):
    status = 422
    code = "path-not-allowed"
    title = "Path not allowed"


class DomainNotRunning(AppError):
    status = 409
    code = "domain-not-running"
    title = "Domain not running"


class InvalidState(AppError):
    status = 409
    code = "invalid-state"
    title = "Invalid state"


class ChainBroken(AppError):
    status = 409
    code = "chain-broken"
    title = "Backup chain broken"


class IdempotencyConflict(AppError):
    status = 422
    code = "idempotency-conflict"
    title = "Idempotency key reused with another request"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class MisdirectedRequest(AppError):
    """A tokenless service asked under a name that is not its own: a web page that
    re-resolved its name to loopback (DNS rebinding) must not reach the API."""

    status = 421
    code = "misdirected-request"
    title = "Misdirected request"


class UnsupportedMediaType(AppError):
    """A body that is not JSON: browsers send form and text bodies across sites
    without asking first, so the API reads none."""

    status = 415
    code = "unsupported-media-type"
    title = "Unsupported media type"


class HostUnreachable(AppError):
    """The host's libvirt connection is down; the caller may retry later."""

    status = 503
    code = "host-unreachable"
    title = "Host unreachable"


class HypervisorError(AppError):
    """libvirt refused a call; `libvirt_code` and the message are libvirt's own."""

    status = 502
    code = "libvirt-error"
    title = "libvirt error"

    def __init__(self, detail: str, libvirt_code: int | None = None, **extra: Any) -> None:
        super().__init__(detail, libvirt_code=libvirt_code, **extra)
        self.libvirt_code = libvirt_code


class RetryLater(AppError):
    """Refused for now, not for good: answered with `Retry-After` where a useful
    wait is known."""

    def __init__(self, detail: str, *, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class LimitReached(RetryLater):
    """A configured limit (queued backups, open event streams) is reached: nothing
    was done; the same request may succeed later."""

    status = 429
    code = "limit-reached"
    title = "Limit reached"


class InsufficientStorage(AppError):
    """Free space under a root is below what the work is estimated to write."""

    status = 507
    code = "insufficient-storage"
    title = "Insufficient storage"


class IdempotencyInProgress(RetryLater):
    """A request with this `Idempotency-Key` is still being processed, so its
    answer is not known yet; retrying later replays it."""

    status = 409
    code = "idempotency-in-progress"
    title = "Idempotency key in use by a request in progress"


class UriNotAllowed(AppError):
    """A host URI outside the allow-list (app/hosts/uris.py); libvirt was not called."""

    status = 422
    code = "uri-not-allowed"
    title = "URI not allowed"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload-too-large"
    title = "Payload too large"


class ServiceUnavailable(RetryLater):
    """Something the service itself needs (the database) does not answer."""

    status = 503
    code = "service-unavailable"
    title = "Service unavailable"


class HypervisorUnsupported(HypervisorError):
    """libvirt says the domain or its driver cannot do what was asked (quiesce with
    no guest agent, a disk format without bitmaps): the request's cause, not a fault."""

    status = 409
    code = "operation-unsupported"
    title = "Not supported by the domain"


class HypervisorInvalidState(HypervisorError):
    """libvirt says the domain's present state does not allow the operation."""

    status = 409
    code = "invalid-state"
    title = "Invalid state"
