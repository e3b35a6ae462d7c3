"""libvirt errors mapped to the service's own, keeping libvirt's code and message."""

from __future__ import annotations

import libvirt

from app.errors import (
    AppError,
    CheckpointNotFound,
    DomainNotFound,
    HostUnreachable,
    HypervisorError,
)

_CONNECTION_LOST = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
}


def map_libvirt_error(error: libvirt.libvirtError, host: str) -> AppError:
    code = error.get_error_code()
    message = error.get_error_message() or str(error)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, libvirt_code=code)
    if code == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
        return CheckpointNotFound(message, libvirt_code=code)
    if code in _CONNECTION_LOST:
        return HostUnreachable(f"host {host}: {message}", libvirt_code=code)
    return HypervisorError(f"libvirt error {code}: {message}", libvirt_code=code)
