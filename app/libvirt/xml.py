"""libvirt's backup, checkpoint and domain XML, built and read with lxml.

Pure functions: no libvirt import, no I/O. Builders take the validated specs of
`app.hypervisor` and never format XML as strings, so no value can inject markup.
They still refuse (with `InvalidRequest`) what libvirt's schema or libvirt 9.0
itself would refuse, so a planning mistake surfaces as a clear 422 and not as a
libvirt error halfway through starting a job.

Parsers read what libvirt writes (`virDomainBackupGetXMLDesc`,
`virDomainCheckpointGetXMLDesc`, `virDomainGetXMLDesc`); a document they cannot
read is libvirt's fault, so it raises `HypervisorError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lxml import etree

from app.errors import HypervisorError, InvalidRequest
from app.hypervisor import (
    BackupDiskState,
    BackupMode,
    BackupSpec,
    BackupState,
    CheckpointDisk,
    CheckpointInfo,
    CheckpointKind,
    CheckpointSpec,
    DiskBackupMode,
    DiskBackupSpec,
    NbdServerSpec,
    Transport,
)

# One allow-list for every name the service hands to libvirt; re-exported from
# here for the adapter. Use `fullmatch`: `$` alone also matches before a final "\n".
from app.names import NAME_PATTERN

__all__ = [
    "NAME_PATTERN",
    "DiskXml",
    "build_backup_xml",
    "build_checkpoint_xml",
    "parse_backup_xml",
    "parse_checkpoint_xml",
    "parse_domain_disks",
]

# Formats a push target may take. libvirt's schema lists more, but only these two
# are meaningful backup files (and an incremental chain needs qcow2).
PUSH_FORMATS: Final = frozenset({"qcow2", "raw"})

# Where a file or block store keeps its path, in <target>, <scratch> and <source>.
_PATH_ATTR: Final = {"file": "file", "block": "dev"}
_SOURCE_ATTR: Final = {"file": "file", "block": "dev", "dir": "dir"}

# Characters XML 1.0 cannot carry at all; lxml would raise a bare ValueError.
_XML_ILLEGAL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9.-]{1,253}")  # libvirt's dnsName


@dataclass(frozen=True)
class DiskXml:
    """One `<devices><disk>` of a domain, as its XML says; the adapter adds capacity."""

    name: str  # target dev, e.g. "vda"
    device: str  # "disk", "cdrom", ...
    type: str  # "file", "block", "network", ...
    format: str | None  # <driver type>
    source: str | None  # file or device path, "protocol:name" for network
    alias: str | None  # <alias name>, e.g. "ua-vda" or "virtio-disk0"


# --- building -------------------------------------------------------------------


def build_backup_xml(spec: BackupSpec) -> str:
    """The `<domainbackup>` document for `virDomainBackupBegin`."""
    if spec.mode not in ("push", "pull"):
        raise InvalidRequest(f"unknown backup mode {spec.mode!r}")
    root = etree.Element("domainbackup", mode=spec.mode)
    if spec.incremental is not None:
        etree.SubElement(root, "incremental").text = _name(spec.incremental, "incremental")
    server = _server_attrs(spec)
    if server is not None:
        etree.SubElement(root, "server", server)
    if spec.disks:
        # With no <disks> libvirt backs up every disk and names the files itself.
        disks = etree.SubElement(root, "disks")
        _check_unique(disk.name for disk in spec.disks)
        for disk in spec.disks:
            _add_backup_disk(disks, disk, spec)
    return _serialize(root)


def build_checkpoint_xml(spec: CheckpointSpec) -> str:
    """The `<domaincheckpoint>` document for `virDomainCheckpointCreateXML` or
    `virDomainBackupBegin`."""
    root = etree.Element("domaincheckpoint")
    etree.SubElement(root, "name").text = _name(spec.name, "checkpoint name")
    if spec.description is not None:
        etree.SubElement(root, "description").text = _text(spec.description, "description")
    if spec.disks:
        disks = etree.SubElement(root, "disks")
        _check_unique(disk.name for disk in spec.disks)
        for disk in spec.disks:
            if disk.checkpoint not in ("bitmap", "no"):
                raise InvalidRequest(f"disk {disk.name}: unknown checkpoint {disk.checkpoint!r}")
            etree.SubElement(
                disks, "disk", name=_name(disk.name, "disk name"), checkpoint=disk.checkpoint
            )
    return _serialize(root)


def _server_attrs(spec: BackupSpec) -> dict[str, str] | None:
    server = spec.server
    if spec.mode == "push":
        if server is not None:
            raise InvalidRequest("a push backup has no NBD server")
        return None
    if server is None:
        # The schema requires <server> in pull mode; libvirt's own default (tcp,
        # no port) is refused by libvirt itself.
        raise InvalidRequest("a pull backup needs an NBD server")
    # Explicit both ways, so that what libvirt echoes back is what we asked for.
    attrs = {"transport": server.transport, "tls": "yes" if server.tls else "no"}
    if server.transport == "unix":
        if server.name is not None or server.port is not None:
            raise InvalidRequest("a unix NBD server takes a socket, not a name or port")
        attrs["socket"] = _abs_path(server.socket, "server socket")
    elif server.transport == "tcp":
        if server.socket is not None:
            raise InvalidRequest("a tcp NBD server takes a name and port, not a socket")
        attrs["name"] = _host(server.name)
        attrs["port"] = str(_port(server.port))
    else:
        raise InvalidRequest(f"unknown NBD transport {server.transport!r}")
    return attrs


def _add_backup_disk(parent: etree._Element, disk: DiskBackupSpec, spec: BackupSpec) -> None:
    name = _name(disk.name, "disk name")
    if not disk.backup:
        # The schema allows nothing else on an excluded disk.
        etree.SubElement(parent, "disk", name=name, backup="no")
        return
    if disk.type not in _PATH_ATTR:
        raise InvalidRequest(f"disk {name}: unknown type {disk.type!r}")
    element = etree.SubElement(parent, "disk", name=name, backup="yes", type=disk.type)
    if disk.backupmode is not None:
        element.set("backupmode", _backupmode(disk, spec))
    if spec.mode == "push":
        _add_push_store(element, disk)
    else:
        _add_pull_store(element, disk)


def _backupmode(disk: DiskBackupSpec, spec: BackupSpec) -> str:
    if disk.backupmode not in ("full", "incremental"):
        raise InvalidRequest(f"disk {disk.name}: unknown backupmode {disk.backupmode!r}")
    if disk.backupmode == "incremental" and spec.incremental is None:
        raise InvalidRequest(f"disk {disk.name}: an incremental disk needs a base checkpoint")
    return disk.backupmode


def _add_push_store(element: etree._Element, disk: DiskBackupSpec) -> None:
    if disk.scratch is not None:
        raise InvalidRequest(f"disk {disk.name}: a scratch is for pull backups")
    # Required: libvirt 9.0 generates a file name only when <disks> is absent; a
    # listed disk without one fails with "argument key 'filename' must not have
    # null value".
    path = _abs_path(disk.target, f"disk {disk.name} target")
    etree.SubElement(element, "target", {_PATH_ATTR[disk.type]: path})
    if disk.driver is not None:
        if disk.driver not in PUSH_FORMATS:
            raise InvalidRequest(f"disk {disk.name}: unsupported target format {disk.driver!r}")
        etree.SubElement(element, "driver", type=disk.driver)


def _add_pull_store(element: etree._Element, disk: DiskBackupSpec) -> None:
    if disk.target is not None or disk.driver is not None:
        raise InvalidRequest(f"disk {disk.name}: a target and driver are for push backups")
    # Required for the same reason as a push target; libvirt picks qcow2 itself,
    # the only scratch format it accepts.
    path = _abs_path(disk.scratch, f"disk {disk.name} scratch")
    etree.SubElement(element, "scratch", {_PATH_ATTR[disk.type]: path})


def _name(value: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{what} {value!r} is not an allowed name")
    return value


def _text(value: str, what: str) -> str:
    if _XML_ILLEGAL.search(value):
        raise InvalidRequest(f"{what} holds a character XML cannot carry")
    return value


def _abs_path(path: str | None, what: str) -> str:
    if path is None:
        raise InvalidRequest(f"{what} is required")
    if not path.startswith("/") or _CONTROL.search(path):
        raise InvalidRequest(f"{what} {path!r} must be an absolute path")
    return path


def _host(name: str | None) -> str:
    if name is None:
        raise InvalidRequest("a tcp NBD server needs a name")
    try:
        ipaddress.ip_address(name)
        return name  # as given, so that libvirt echoes back the same string
    except ValueError:
        pass  # not an address: a host name then
    if not _HOST_NAME.fullmatch(name):
        raise InvalidRequest(f"NBD server name {name!r} is not a host name or address")
    return name


def _port(port: int | None) -> int:
    # libvirt 9.0 allocates no port itself: "must specify TCP port for now".
    if port is None or not 0 < port < 65536:
        raise InvalidRequest(f"a tcp NBD server needs a port from 1 to 65535, not {port!r}")
    return port


def _check_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidRequest(f"disk {name!r} is listed twice")
        seen.add(name)


def _serialize(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode", pretty_print=True)


# --- reading --------------------------------------------------------------------


def parse_backup_xml(xml: str) -> BackupState:
    """What `virDomainBackupGetXMLDesc` says: the values libvirt actually chose."""
    root = _parse(xml, "domainbackup")
    mode = _backup_mode(root.get("mode", "push"))
    server = root.find("server")
    return BackupState(
        mode=mode,
        incremental=_child_text(root, "incremental"),
        server=None if server is None else _parse_server(server),
        disks=tuple(_parse_backup_disk(disk, mode) for disk in root.iterfind("disks/disk")),
    )


def parse_checkpoint_xml(xml: str) -> CheckpointInfo:
    """What `virDomainCheckpointGetXMLDesc` says, with or without `<domain>`."""
    root = _parse(xml, "domaincheckpoint")
    # Direct children only: a nested <domain> has a <name> and <description> too.
    return CheckpointInfo(
        name=_required_text(root, "name"),
        parent=_child_text(root, "parent/name"),
        created_at=_unix_time(_required_text(root, "creationTime")),
        description=root.findtext("description"),
        disks=tuple(_parse_checkpoint_disk(disk) for disk in root.iterfind("disks/disk")),
        xml=xml,
    )


def parse_domain_disks(xml: str) -> list[DiskXml]:
    """The disks of a domain, from `virDomainGetXMLDesc`."""
    root = _parse(xml, "domain")
    return [_parse_domain_disk(disk) for disk in root.iterfind("devices/disk")]


def _parse_server(server: etree._Element) -> NbdServerSpec:
    port = server.get("port")
    return NbdServerSpec(
        transport=_transport(server.get("transport", "tcp")),  # libvirt's default
        socket=server.get("socket"),
        name=server.get("name"),
        port=None if port is None else _int(port, "server port"),
        # Absent means no TLS: libvirt enables it only on an explicit tls='yes'.
        tls=server.get("tls") == "yes",
    )


def _parse_backup_disk(disk: etree._Element, mode: BackupMode) -> BackupDiskState:
    # libvirt reads <target> in push mode and <scratch> in pull mode, nothing else.
    store = _store_path(disk.find("target" if mode == "push" else "scratch"))
    return BackupDiskState(
        name=_required_attr(disk, "name"),
        backup=disk.get("backup", "yes") != "no",
        backupmode=_disk_backup_mode(disk.get("backupmode")),
        type=disk.get("type"),
        format=_child_attr(disk, "driver", "type"),
        target=store if mode == "push" else None,
        scratch=store if mode == "pull" else None,
        export_name=disk.get("exportname"),
        export_bitmap=disk.get("exportbitmap"),
    )


def _parse_checkpoint_disk(disk: etree._Element) -> CheckpointDisk:
    size = disk.get("size")
    return CheckpointDisk(
        name=_required_attr(disk, "name"),
        checkpoint=_checkpoint_kind(disk.get("checkpoint", "bitmap")),
        bitmap=disk.get("bitmap"),
        size_bytes=None if size is None else _int(size, "checkpoint disk size"),
    )


def _parse_domain_disk(disk: etree._Element) -> DiskXml:
    disk_type = disk.get("type", "file")
    name = _child_attr(disk, "target", "dev")
    if name is None:
        raise HypervisorError("a domain disk has no <target dev>")
    return DiskXml(
        name=name,
        device=disk.get("device", "disk"),
        type=disk_type,
        format=_child_attr(disk, "driver", "type"),
        source=_disk_source(disk.find("source"), disk_type),
        alias=_child_attr(disk, "alias", "name"),
    )


def _disk_source(source: etree._Element | None, disk_type: str) -> str | None:
    if source is None:
        return None  # an empty drive, such as a cdrom with no medium
    if disk_type == "network":
        protocol, name = source.get("protocol"), source.get("name")
        if protocol is None or name is None:
            return protocol
        return f"{protocol}:{name}"
    attr = _SOURCE_ATTR.get(disk_type)
    return None if attr is None else source.get(attr)


def _store_path(store: etree._Element | None) -> str | None:
    if store is None:
        return None
    return store.get("file", store.get("dev"))


def _parse(xml: str, root_tag: str) -> etree._Element:
    # libvirt never writes a DTD. Not resolving entities and then refusing any
    # DOCTYPE keeps a crafted document (a stored XML, say) from reading local
    # files or the network, or from silently losing text to unresolved entities.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        # Bytes, because lxml refuses a str that carries an encoding declaration.
        root = etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as error:
        raise HypervisorError(f"unreadable <{root_tag}> XML: {error}") from error
    if root.getroottree().docinfo.internalDTD is not None:
        raise HypervisorError(f"<{root_tag}> XML with a DOCTYPE is not libvirt's")
    if root.tag != root_tag:
        raise HypervisorError(f"expected <{root_tag}> XML, got <{root.tag}>")
    return root


def _child_text(element: etree._Element, path: str) -> str | None:
    text = element.findtext(path)
    if text is None:
        return None
    return text.strip() or None  # an empty element says nothing


def _required_text(element: etree._Element, path: str) -> str:
    text = _child_text(element, path)
    if not text:
        raise HypervisorError(f"<{element.tag}> has no <{path}>")
    return text


def _child_attr(element: etree._Element, child: str, attr: str) -> str | None:
    found = element.find(child)
    return None if found is None else found.get(attr)


def _required_attr(element: etree._Element, attr: str) -> str:
    value = element.get(attr)
    if value is None:
        raise HypervisorError(f"<{element.tag}> has no {attr} attribute")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise HypervisorError(f"{what} {text!r} is not a number") from error


def _unix_time(text: str) -> datetime:
    seconds = _int(text, "creationTime")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise HypervisorError(f"creationTime {text!r} is out of range") from error


def _backup_mode(value: str) -> BackupMode:
    if value == "push":
        return "push"
    if value == "pull":
        return "pull"
    raise HypervisorError(f"unknown backup mode {value!r}")


def _disk_backup_mode(value: str | None) -> DiskBackupMode | None:
    if value is None:
        return None
    if value == "full":
        return "full"
    if value == "incremental":
        return "incremental"
    raise HypervisorError(f"unknown disk backupmode {value!r}")


def _transport(value: str) -> Transport:
    if value == "unix":
        return "unix"
    if value == "tcp":
        return "tcp"
    raise HypervisorError(f"unsupported NBD transport {value!r}")


def _checkpoint_kind(value: str) -> CheckpointKind:
    if value == "bitmap":
        return "bitmap"
    if value == "no":
        return "no"
    raise HypervisorError(f"unknown disk checkpoint {value!r}")
