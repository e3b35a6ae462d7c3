"""The test bench itself, against the real libvirtd: throw-away domains start, their disks
change through QEMU, and libvirt's push and pull backups of them hold the right bytes.

Every test runs over the local socket and over the loopback TCP URI (when libvirtd
listens there). The backup XML is written inline: this checks the bench, not the builders.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from app.libvirt.events import ensure_event_loop
from tests.support.vms import (
    JobCompleted,
    MiB,
    QemuIoError,
    TestVM,
    create_vm,
    destroy_vm,
    dirty_ranges,
    domain,
    image_info,
    nbd_copy,
    nbd_map,
    pause,
    qemu_img_compare,
    read_image,
    resume,
    wait_released,
    wait_until,
    write_pattern,
)

pytestmark = pytest.mark.libvirt

DISK = 64 * MiB


@pytest.fixture(scope="module", params=["qemu:///system", "qemu+tcp://127.0.0.1/system"])
def conn(request: pytest.FixtureRequest) -> Iterator[libvirt.virConnect]:
    ensure_event_loop()  # before the connection opens, or it gets no events
    try:
        connection = libvirt.open(request.param)
    except libvirt.libvirtError as e:
        pytest.skip(f"no libvirtd at {request.param}: {e.get_error_message()}")
    yield connection
    connection.close()


@pytest.fixture
def vm(conn: libvirt.virConnect, tmp_path: Path) -> Iterator[TestVM]:
    machine = create_vm(conn, workdir=tmp_path, disks={"vda": DISK})
    yield machine
    destroy_vm(conn, machine)


def checkpoint_xml(name: str) -> str:
    return f"<domaincheckpoint><name>{name}</name></domaincheckpoint>"


def push_xml(target: Path, incremental: str | None = None) -> str:
    since = f"<incremental>{incremental}</incremental>" if incremental else ""
    return f"""<domainbackup mode='push'>{since}<disks>
      <disk name='vda' type='file'><target file='{target}'/><driver type='qcow2'/></disk>
    </disks></domainbackup>"""


def pull_xml(socket: Path, scratch: Path, incremental: str | None = None) -> str:
    since = f"<incremental>{incremental}</incremental>" if incremental else ""
    return f"""<domainbackup mode='pull'>{since}
      <server transport='unix' socket='{socket}'/>
      <disks><disk name='vda' type='file'><scratch file='{scratch}'/></disk></disks>
    </domainbackup>"""


def test_vm_runs_and_write_pattern_changes_the_disk(conn: libvirt.virConnect, vm: TestVM) -> None:
    dom = domain(conn, vm)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "<alias name='ua-vda'/>" in dom.XMLDesc()

    write_pattern(conn, vm, "vda", 16 * MiB, 2 * MiB, 0xAB)
    pause(conn, vm)  # flushes QEMU's qcow2 caches: before that the file may lag
    data = read_image(vm.disks["vda"])

    assert len(data) == DISK
    assert data[16 * MiB : 18 * MiB] == b"\xab" * (2 * MiB)
    assert data.count(0) == DISK - 2 * MiB
    resume(conn, vm)
    with pytest.raises(QemuIoError, match="write failed"):
        write_pattern(conn, vm, "vda", DISK, MiB, 0xAB)  # past the end


def test_push_full_then_incremental_equal_the_paused_disk(
    conn: libvirt.virConnect, vm: TestVM
) -> None:
    dom = domain(conn, vm)
    full, inc = vm.dir / "full.qcow2", vm.dir / "inc.qcow2"
    write_pattern(conn, vm, "vda", 16 * MiB, 2 * MiB, 0xAB)
    pause(conn, vm)

    with JobCompleted(conn, dom) as job:
        dom.backupBegin(push_xml(full), checkpoint_xml("c1"))
        event = job.wait()
    completed = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    wait_released(full)

    assert event["success"] is True
    assert "errmsg" not in event
    assert event["disk_total"] == event["disk_processed"] == DISK
    assert completed["type"] == libvirt.VIR_DOMAIN_JOB_COMPLETED
    assert completed["disk_processed"] == DISK
    assert qemu_img_compare(vm.disks["vda"], full)
    assert dom.checkpointLookupByName("c1").getName() == "c1"

    resume(conn, vm)
    write_pattern(conn, vm, "vda", 4 * MiB, MiB, 0x5A)
    pause(conn, vm)
    assert not qemu_img_compare(vm.disks["vda"], full)  # the check can fail
    with JobCompleted(conn, dom) as job:
        dom.backupBegin(push_xml(inc, incremental="c1"), checkpoint_xml("c2"))
        event = job.wait()
    wait_released(inc)

    assert event["success"] is True
    assert event["disk_total"] == MiB  # only what changed since c1
    # libvirt makes the incremental target with the live disk as its backing file.
    assert image_info(inc)["full-backing-filename"] == str(vm.disks["vda"])
    rebase = ["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(full), str(inc)]
    subprocess.run(rebase, check=True)
    assert qemu_img_compare(vm.disks["vda"], inc)


def test_pull_exports_the_point_in_time_and_the_incremental_dirty_map(
    conn: libvirt.virConnect, vm: TestVM
) -> None:
    dom = domain(conn, vm)
    socket, scratch = vm.dir / "nbd.sock", vm.dir / "vda.scratch"
    uri = f"nbd+unix:///vda?socket={socket}"
    write_pattern(conn, vm, "vda", 16 * MiB, 2 * MiB, 0xAB)
    pause(conn, vm)
    at_begin = read_image(vm.disks["vda"])

    with JobCompleted(conn, dom) as job:
        dom.backupBegin(pull_xml(socket, scratch), checkpoint_xml("c1"))
        resume(conn, vm)
        write_pattern(conn, vm, "vda", 0, MiB, 0x11)  # after the point in time
        exported = nbd_copy(uri, vm.dir / "full.raw")
        running = dom.jobStats()
        dom.abortJob()  # the normal end of a pull backup
        event = job.wait()

    assert exported == at_begin
    assert exported[16 * MiB : 17 * MiB] == b"\xab" * MiB
    assert running["type"] == libvirt.VIR_DOMAIN_JOB_UNBOUNDED
    assert running["disk_temp_used"] == MiB  # the 0x11 write pushed old data to scratch
    # An aborted pull is reported as completed: success, with libvirt's cancel message.
    assert event["success"] is True
    assert event["errmsg"] == "Operation canceled"
    # libvirt removes them just after the event.
    wait_until(lambda: not socket.exists() and not scratch.exists(), "socket, scratch removed")

    write_pattern(conn, vm, "vda", 40 * MiB, 3 * MiB, 0x77)
    pause(conn, vm)
    at_begin = read_image(vm.disks["vda"])
    with JobCompleted(conn, dom) as job:
        dom.backupBegin(pull_xml(socket, scratch, incremental="c1"), checkpoint_xml("c2"))
        extents = nbd_map(uri, "qemu:dirty-bitmap:backup-vda")
        exported = nbd_copy(uri, vm.dir / "inc.raw")
        dom.abortJob()
        job.wait()

    assert dirty_ranges(extents) == [(0, MiB), (40 * MiB, 3 * MiB)]  # 0x11 and 0x77 since c1
    assert exported == at_begin
