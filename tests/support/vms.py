"""Throw-away QEMU domains for the integration tests, and the checks made on their disks.

A test domain has no guest OS: TCG, 64 MiB, one vcpu, qcow2 virtio disks, each with a user
alias (`ua-vda`, ...) so QEMU names its device `/machine/peripheral/ua-vda/virtio-backend`.
It starts in a fraction of a second and sits in the firmware; the tests change its disks
through QEMU itself (`write_pattern`) and compare images with `qemu-img -U`.

    vm = create_vm(conn, workdir=tmp_path)
    try:
        ...
    finally:
        destroy_vm(conn, vm)

or `with throwaway_vm(conn, workdir=tmp_path) as vm: ...`.
Tests only: the service never uses the QEMU monitor.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar
from xml.sax.saxutils import escape, quoteattr

import libvirt
import libvirt_qemu

MiB = 1024 * 1024
NAME_PREFIX = "vmbt-"
DEFAULT_DISKS: Mapping[str, int] = MappingProxyType({"vda": 64 * MiB})
# QEMU's stdout, where HMP `qemu-io` prints its result (QEMU 7.2 does not answer it on the
# monitor). Local to the libvirtd host: the tests run on that host.
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")

_DISK_NAME = re.compile(r"vd[a-z]")


@dataclass
class TestVM:
    """One throw-away domain. `dir` holds its disks and anything a test puts there."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    uuid: str
    disks: dict[str, Path]
    dir: Path

    @property
    def log(self) -> Path:
        return QEMU_LOG_DIR / f"{self.name}.log"


class QemuIoError(RuntimeError):
    """`qemu-io` through the monitor failed or did not report success."""


def domain_xml(name: str, disks: Mapping[str, Path]) -> str:
    """The `<domain type='qemu'>` of a test domain: no OS, no network, no graphics."""
    disk_xml = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(path))}/>
      <target dev='{dev}' bus='virtio'/>
      <alias name='ua-{dev}'/>
    </disk>"""
        for dev, path in disks.items()
    )
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{disk_xml}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def create_vm(
    conn: libvirt.virConnect,
    *,
    workdir: Path,
    disks: Mapping[str, int] = DEFAULT_DISKS,
    start: bool = True,
) -> TestVM:
    """Make qcow2 disks (`{"vda": size_in_bytes, ...}`) under `workdir/<name>/`, define the
    domain and start it. On any failure it cleans up what it made, then raises."""
    for dev in disks:
        if not _DISK_NAME.fullmatch(dev):
            raise ValueError(f"disk name {dev!r}: expected vda, vdb, ...")
    name = NAME_PREFIX + secrets.token_hex(4)
    vm_dir = workdir / name
    vm = TestVM(
        name=name,
        uuid="",
        disks={dev: vm_dir / f"{dev}.qcow2" for dev in disks},
        dir=vm_dir,
    )
    try:
        vm_dir.mkdir(parents=True)
        for dev, size in disks.items():
            _run(["qemu-img", "create", "-q", "-f", "qcow2", str(vm.disks[dev]), str(size)])
        dom = conn.defineXML(domain_xml(name, vm.disks))
        vm.uuid = dom.UUIDString()
        if start:
            dom.create()
    except BaseException:
        destroy_vm(conn, vm)
        raise
    return vm


def destroy_vm(conn: libvirt.virConnect, vm: TestVM) -> None:
    """Destroy, drop checkpoint metadata, undefine, remove files and the QEMU log.

    Does every step even when one fails or the domain is already gone; raises at the end if
    a step failed for another reason than the domain (or its state) being gone already."""
    errors: list[str] = []
    dom: libvirt.virDomain | None = None
    try:
        dom = _lookup(conn, vm)
    except libvirt.libvirtError as e:
        errors.append(f"lookup: {e}")
    if dom is not None:
        _step(errors, "destroy", dom.destroy)
        _step(errors, "delete checkpoints", lambda: _delete_checkpoint_metadata(dom))
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        _step(errors, "undefine", lambda: dom.undefineFlags(flags))
    shutil.rmtree(vm.dir, ignore_errors=True)
    vm.log.unlink(missing_ok=True)
    if errors:
        raise RuntimeError(f"cleaning up {vm.name}: " + "; ".join(errors))


@contextmanager
def throwaway_vm(
    conn: libvirt.virConnect,
    *,
    workdir: Path,
    disks: Mapping[str, int] = DEFAULT_DISKS,
    start: bool = True,
) -> Iterator[TestVM]:
    """`create_vm` ... `destroy_vm`, the latter even when the body fails."""
    vm = create_vm(conn, workdir=workdir, disks=disks, start=start)
    try:
        yield vm
    finally:
        destroy_vm(conn, vm)


def domain(conn: libvirt.virConnect, vm: TestVM) -> libvirt.virDomain:
    """A fresh handle on the domain (by UUID); raises libvirtError when it is gone."""
    return conn.lookupByUUIDString(vm.uuid)


def pause(conn: libvirt.virConnect, vm: TestVM) -> None:
    """Suspend the domain. QEMU flushes its disks on the way: read the qcow2 files only
    while paused, or they may not hold the latest writes yet."""
    domain(conn, vm).suspend()


def resume(conn: libvirt.virConnect, vm: TestVM) -> None:
    domain(conn, vm).resume()


def lose_checkpoint_metadata(conn: libvirt.virConnect, vm: TestVM) -> None:
    """Undefine and define the domain again from its XML, then start it.

    libvirt 9.0 keeps a running domain's checkpoint metadata through undefine (it
    discards only an inactive domain's), so the domain stops first; QEMU writes its
    persistent bitmaps into the qcow2 as it stops, and loads them when it starts."""
    dom = domain(conn, vm)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    dom = conn.defineXML(xml)
    dom.create()
    assert dom.listAllCheckpoints() == []


def _qmp(dom: libvirt.virDomain, command: str, **arguments: Any) -> Any:
    reply = libvirt_qemu.qemuMonitorCommand(
        dom, json.dumps({"execute": command, "arguments": arguments}), 0
    )
    return json.loads(reply)["return"]


def drop_bitmap(dom: libvirt.virDomain, bitmap: str) -> None:
    """Remove a bitmap in QEMU behind libvirt's back (tests only: the monitor)."""
    nodes = _qmp(dom, "query-named-block-nodes", flat=True)
    node = next(
        n["node-name"] for n in nodes if bitmap in {b["name"] for b in n.get("dirty-bitmaps", [])}
    )
    _qmp(dom, "block-dirty-bitmap-remove", node=node, name=bitmap)


def set_backup_speed(conn: libvirt.virConnect, vm: TestVM, bytes_per_second: int) -> int:
    """Throttle the domain's running backup block jobs (0: no limit) through QMP
    `block-job-set-speed`, so a test can hold a push running; the number of jobs
    throttled. libvirt has no speed setting for backups (tests only: the monitor)."""
    dom = domain(conn, vm)
    jobs = [
        job
        for job in _qmp(dom, "query-block-jobs")
        if job["type"] == "backup" and job["status"] == "running"
    ]
    held = 0
    for job in jobs:
        command = {
            "execute": "block-job-set-speed",
            "arguments": {"device": job["device"], "speed": bytes_per_second},
        }
        reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(command), 0))
        held += "return" in reply  # else the job ended in between
    return held


def fill_disk(vm: TestVM, disk: str, length: int, byte: int) -> None:
    """Write `length` bytes of `byte` from the start of a disk of a stopped
    domain, with qemu-io on its qcow2 (fast, for large amounts of data)."""
    _run(["qemu-io", "-f", "qcow2", "-c", f"write -P {byte:#04x} 0 {length}", str(vm.disks[disk])])


def write_pattern(
    conn: libvirt.virConnect, vm: TestVM, disk: str, offset: int, length: int, byte: int
) -> None:
    """Write `length` bytes of `byte` at `offset` into the running disk, through QEMU.

    Runs HMP `qemu-io -d /machine/peripheral/ua-<disk>/virtio-backend "write -P ..."`.
    QEMU 7.2 answers a bad device on the monitor but prints the qemu-io result on its
    stdout, so success is read from the domain's log: the `wrote N/N bytes at offset O`
    line must appear, else QemuIoError."""
    if disk not in vm.disks:
        raise ValueError(f"{vm.name} has no disk {disk!r}")
    if not 0 <= byte <= 0xFF or offset < 0 or length <= 0:
        raise ValueError("byte must be 0..255, offset >= 0, length > 0")
    command = f"write -P {byte:#04x} {offset} {length}"
    _qemu_io(conn, vm, disk, command, expect=f"wrote {length}/{length} bytes at offset {offset}")


def write_bytes_from(
    conn: libvirt.virConnect, vm: TestVM, disk: str, offset: int, source: Path
) -> None:
    """Write the whole of `source` (a host file QEMU can read) into the running disk at
    `offset`, through QEMU (`qemu-io "write -s source offset length"`): the guest's own
    bytes, as a guest would write them. `offset` and the length must be sector-aligned."""
    if disk not in vm.disks:
        raise ValueError(f"{vm.name} has no disk {disk!r}")
    length = source.stat().st_size
    if length == 0 or offset % 512 or length % 512:
        raise ValueError("offset and length must be multiples of 512, length > 0")
    command = f"write -s {source} {offset} {length}"
    _qemu_io(conn, vm, disk, command, expect=f"wrote {length}/{length} bytes at offset {offset}")


def _qemu_io(conn: libvirt.virConnect, vm: TestVM, disk: str, command: str, expect: str) -> None:
    log_start = vm.log.stat().st_size if vm.log.exists() else 0
    hmp = f'qemu-io -d /machine/peripheral/ua-{disk}/virtio-backend "{command}"'
    reply = libvirt_qemu.qemuMonitorCommand(
        domain(conn, vm), hmp, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    if reply.strip():
        raise QemuIoError(f"{vm.name}: {hmp}: {reply.strip()}")
    deadline = time.monotonic() + 10
    while True:
        output = _read_from(vm.log, log_start)
        if expect in output:
            return
        failure = re.search(r"^.*(failed|not found|error).*$", output, re.M | re.I)
        if failure or time.monotonic() > deadline:
            seen = failure.group(0) if failure else output.strip() or "no output in the log"
            raise QemuIoError(f"{vm.name}: {hmp}: {seen}")
        time.sleep(0.02)


def _read_from(path: Path, start: int) -> str:
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) < start:  # virtlogd rotated the log
                start = 0
            f.seek(start)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_job(dom: libvirt.virDomain, timeout: float = 30) -> dict[str, Any]:
    """Poll until the domain's job ends; return its completed stats
    (`jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)`, which libvirt hands out once)."""
    deadline = time.monotonic() + timeout
    while dom.jobStats().get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dom.name()}: job still running after {timeout} s")
        time.sleep(0.05)
    stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return stats


class JobCompleted:
    """Catches `VIR_DOMAIN_EVENT_ID_JOB_COMPLETED` for one domain; `wait()` returns the
    event's stats (those of `jobStats(COMPLETED)`, without `type`). libvirt's event loop must
    have been registered before `conn` was opened (`app.libvirt.events.ensure_event_loop`).

        with JobCompleted(conn, dom) as job:
            dom.backupBegin(...)
            stats = job.wait()
    """

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self._conn = conn
        self._dom = dom
        self._done = threading.Event()
        self._stats: dict[str, Any] = {}
        self._callback_id: int | None = None

    def __enter__(self) -> JobCompleted:
        self._callback_id = self._conn.domainEventRegisterAny(
            self._dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_event, None
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._callback_id is not None:
            self._conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None

    def _on_event(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, stats: dict[str, Any], _: object
    ) -> None:
        self._stats = dict(stats)
        self._done.set()

    def wait(self, timeout: float = 30) -> dict[str, Any]:
        if not self._done.wait(timeout):
            stats = self._dom.jobStats()
            raise TimeoutError(f"{self._dom.name()}: no JOB_COMPLETED in {timeout} s: {stats}")
        return self._stats


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def wait_released(image: Path) -> None:
    """Wait until QEMU has closed an image it wrote (its write lock is gone).

    libvirt ends a push backup (JOB_COMPLETED, jobStats) 10-20 ms before QEMU detaches the
    target: until then the file may lack data or qcow2 metadata. Read a target after this."""

    def unlocked() -> bool:
        result = subprocess.run(["qemu-img", "info", str(image)], capture_output=True, text=True)
        if result.returncode != 0 and "lock" not in result.stderr:
            raise RuntimeError(f"qemu-img info {image}: {result.stderr.strip()}")
        return result.returncode == 0

    wait_until(unlocked, f"QEMU closes {image}")


def qemu_img_compare(a: Path | str, b: Path | str) -> bool:
    """`qemu-img compare -U a b`: True when the guest-visible contents are equal.
    Formats are probed; a larger image is equal only if its extra tail reads as zeros."""
    result = subprocess.run(
        ["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True
    )
    if result.returncode in (0, 1):
        return result.returncode == 0
    raise RuntimeError(f"qemu-img compare {a} {b}: {result.stderr.strip()}")


def read_image(path: Path | str, fmt: str | None = None) -> bytes:
    """The guest-visible contents of a (small) image, via `qemu-img convert -U -O raw`."""
    with tempfile.TemporaryDirectory(prefix="vmbt-") as tmp:
        raw = Path(tmp) / "image.raw"
        fmt_args = ["-f", fmt] if fmt else []
        _run(["qemu-img", "convert", "-U", *fmt_args, "-O", "raw", str(path), str(raw)])
        return raw.read_bytes()


def sha256_of_image(path: Path | str, fmt: str | None = None) -> str:
    """sha256 of the guest-visible contents (a raw conversion), for small images."""
    return hashlib.sha256(read_image(path, fmt)).hexdigest()


def nbd_copy(uri: str, dest: Path) -> bytes:
    """Read a whole NBD export with `nbdcopy` into `dest` (raw) and return its bytes."""
    _run(["nbdcopy", uri, str(dest)])
    return dest.read_bytes()


def nbd_map(uri: str, context: str = "base:allocation") -> list[dict[str, Any]]:
    """`nbdinfo --map=CONTEXT --json URI`: extents as `{"offset", "length", "type",
    "description"}`. For `qemu:dirty-bitmap:...` type 1 is dirty, 0 clean."""
    out = _run(["nbdinfo", f"--map={context}", "--json", uri])
    extents: list[dict[str, Any]] = json.loads(out)
    return extents


def dirty_ranges(extents: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(offset, length) of the dirty extents of a dirty-bitmap map, adjacent ones merged."""
    ranges: list[tuple[int, int]] = []
    for e in extents:
        if e["type"] & 1 == 0:
            continue
        if ranges and sum(ranges[-1]) == e["offset"]:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + e["length"])
        else:
            ranges.append((e["offset"], e["length"]))
    return ranges


def image_info(path: Path | str) -> dict[str, Any]:
    """`qemu-img info -U --output=json`."""
    info: dict[str, Any] = json.loads(_run(["qemu-img", "info", "-U", "--output=json", str(path)]))
    return info


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def _lookup(conn: libvirt.virConnect, vm: TestVM) -> libvirt.virDomain | None:
    try:
        if vm.uuid:
            return conn.lookupByUUIDString(vm.uuid)
        return conn.lookupByName(vm.name)  # define failed or never ran
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _delete_checkpoint_metadata(dom: libvirt.virDomain) -> None:
    # Children before parents, so no deletion has to re-parent anything.
    checkpoints = dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
    for checkpoint in reversed(checkpoints):
        checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)


_GONE = (
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_OPERATION_INVALID,  # not running
    libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT,
)


def _step(errors: list[str], what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in _GONE:
            errors.append(f"{what}: {e}")
