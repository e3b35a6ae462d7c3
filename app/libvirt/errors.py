"""libvirt errors mapped to the service's own, keeping libvirt's code.

The message a client sees has its host paths redacted (libvirt names the files
it failed on, and some errors quote what it read); the full one is logged."""

from __future__ import annotations

import logging

import libvirt

from app.errors import (
    AppError,
    CheckpointNotFound,
    DomainNotFound,
    HostUnreachable,
    HypervisorError,
    HypervisorInvalidState,
    HypervisorUnsupported,
)
from app.redact import redact_paths

log = logging.getLogger(__name__)

_CONNECTION_LOST = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
}

# Causes the request brought (what it asked of this domain), not faults: 409.
_UNSUPPORTED = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
}


def map_libvirt_error(error: libvirt.libvirtError, host: str) -> AppError:
    code = error.get_error_code()
    full = error.get_error_message() or str(error)
    log.info("host %s: libvirt error %s: %s", host, code, full)
    message = redact_paths(full)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, libvirt_code=code)
    if code == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
        return CheckpointNotFound(message, libvirt_code=code)
    if code in _CONNECTION_LOST:
        return HostUnreachable(f"host {host}: {message}", libvirt_code=code)
    if code in _UNSUPPORTED:
        return HypervisorUnsupported(f"libvirt error {code}: {message}", libvirt_code=code)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return HypervisorInvalidState(f"libvirt error {code}: {message}", libvirt_code=code)
    return HypervisorError(f"libvirt error {code}: {message}", libvirt_code=code)


def backup_data_missing(error: libvirt.libvirtError) -> bool:
    """A backup job whose data is not there: being set up (its target and scratch
    nodes being opened, before `backupBegin` returns) or torn down (freed a moment
    before the job ends). Asked for job statistics then, libvirt 9 fails so."""
    return error.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and (
        "backup job data missing" in (error.get_error_message() or "")
    )
