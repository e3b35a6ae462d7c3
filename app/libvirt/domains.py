"""Blocking calls about domains and checkpoints; run on the host's executor."""

from __future__ import annotations

import contextlib
import re
import time

import libvirt

from app.hypervisor import CheckpointInfo, CheckpointSpec, DiskInfo, DomainInfo
from app.libvirt import block_graph, xml

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def lookup(conn: libvirt.virConnect, ref: str) -> libvirt.virDomain:
    if _UUID.match(ref):
        return conn.lookupByUUIDString(ref)
    return conn.lookupByName(ref)


def _capacity(dom: libvirt.virDomain, disk: xml.DiskXml) -> int:
    if disk.source is None:
        return 0  # an empty drive (a cdrom with no medium)
    try:
        with block_graph.asking(dom):
            capacity, _allocation, _physical = dom.blockInfo(disk.name)
    except libvirt.libvirtError:
        return 0  # e.g. a network disk libvirt cannot size while the domain is off
    return int(capacity)


def _disk_info(dom: libvirt.virDomain, disk: xml.DiskXml) -> DiskInfo:
    return DiskInfo(
        name=disk.name,
        device=disk.device,
        type=disk.type,
        format=disk.format,
        source=disk.source,
        capacity_bytes=_capacity(dom, disk),
        # A persistent dirty bitmap lives in a qcow2 image.
        checkpoint_capable=disk.device == "disk" and disk.format == "qcow2",
    )


def describe(dom: libvirt.virDomain) -> DomainInfo:
    state, _reason = dom.state()
    disks = xml.parse_domain_disks(dom.XMLDesc(0))
    return DomainInfo(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATE_NAMES.get(state, "unknown"),
        disks=tuple(_disk_info(dom, disk) for disk in disks),
    )


def list_all(conn: libvirt.virConnect) -> list[DomainInfo]:
    found = []
    for dom in conn.listAllDomains(0):
        try:
            found.append(describe(dom))
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise  # a domain undefined while we listed is simply not there
    return sorted(found, key=lambda info: info.name)


def _checkpoint_info(cp: libvirt.virDomainCheckpoint) -> CheckpointInfo:
    # No VIR_DOMAIN_CHECKPOINT_XML_SIZE here: it needs a domain job, so it
    # clashes with (or waits behind) a running backup job.
    return xml.parse_checkpoint_xml(cp.getXMLDesc(0))


# The list is read again when it changed while it was read: libvirt 9.0 can hand
# out a checkpoint with no name while a backup job is making one ("name in
# virGetDomainCheckpoint must not be NULL", VIR_ERR_INVALID_ARG; found by fuzzing
# during backups), and a checkpoint listed can be deleted before its XML is read
# (VIR_ERR_NO_DOMAIN_CHECKPOINT: another replica's runner pruning, found in CI).
_LIST_CHANGING = {libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT}
_LIST_ATTEMPTS = 5
_LIST_RETRY_SECONDS = 0.1


def list_checkpoints(dom: libvirt.virDomain) -> list[CheckpointInfo]:
    for _ in range(_LIST_ATTEMPTS - 1):
        try:
            return _list_checkpoints(dom)
        except libvirt.libvirtError as error:
            if error.get_error_code() not in _LIST_CHANGING:
                raise
        time.sleep(_LIST_RETRY_SECONDS)  # a libvirt worker thread, not the event loop
    return _list_checkpoints(dom)


def _list_checkpoints(dom: libvirt.virDomain) -> list[CheckpointInfo]:
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL
    return [_checkpoint_info(cp) for cp in dom.listAllCheckpoints(flags)]


def get_checkpoint(dom: libvirt.virDomain, *, name: str) -> CheckpointInfo:
    return _checkpoint_info(dom.checkpointLookupByName(name))


def checkpoint_sizes(dom: libvirt.virDomain, *, name: str) -> dict[str, int | None]:
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_XML_SIZE | libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN
    with block_graph.asking(dom):
        info = xml.parse_checkpoint_xml(dom.checkpointLookupByName(name).getXMLDesc(flags))
    # libvirt 9.0 leaves `size` out, without an error, for a disk whose bitmap
    # QEMU does not have: that is how a lost bitmap shows while metadata remains.
    return {disk.name: disk.size_bytes for disk in info.disks if disk.checkpoint == "bitmap"}


def create_checkpoint(
    dom: libvirt.virDomain, *, checkpoint: CheckpointSpec, quiesce: bool
) -> CheckpointInfo:
    document = xml.build_checkpoint_xml(checkpoint)
    with block_graph.asking(dom):
        if not quiesce:
            return _checkpoint_info(dom.checkpointCreateXML(document, 0))
        # libvirt 9.0's QEMU driver refuses VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE
        # ("unsupported flags (0x2)"): freeze through the guest agent instead.
        dom.fsFreeze()
        try:
            return _checkpoint_info(dom.checkpointCreateXML(document, 0))
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.fsThaw()


def redefine_checkpoint(dom: libvirt.virDomain, *, xml: str) -> None:
    flags = (
        libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        | libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
    )
    with block_graph.asking(dom):  # the validation reads the bitmaps
        dom.checkpointCreateXML(xml, flags)


def delete_checkpoint(
    dom: libvirt.virDomain, *, name: str, children: bool, metadata_only: bool
) -> None:
    flags = 0
    if children:
        flags |= libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN
    if metadata_only:
        flags |= libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    with block_graph.asking(dom):  # libvirt looks for the bitmaps to drop
        dom.checkpointLookupByName(name).delete(flags)
