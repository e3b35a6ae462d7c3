"""Blocking calls about backup jobs; run on the host's executor."""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt

from app.hypervisor import BackupSpec, BackupState, CheckpointSpec, JobStats
from app.libvirt import block_graph, xml
from app.libvirt.errors import backup_data_missing

_FINISHED_JOB_TYPES = {
    libvirt.VIR_DOMAIN_JOB_NONE,
    libvirt.VIR_DOMAIN_JOB_COMPLETED,
    libvirt.VIR_DOMAIN_JOB_FAILED,
    libvirt.VIR_DOMAIN_JOB_CANCELLED,
}


def backup_begin(
    dom: libvirt.virDomain,
    *,
    backup: BackupSpec,
    checkpoint: CheckpointSpec | None,
    reuse_external: bool,
    quiesce: bool,
) -> None:
    flags = libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL if reuse_external else 0
    backup_xml = xml.build_backup_xml(backup)
    checkpoint_xml = None if checkpoint is None else xml.build_checkpoint_xml(checkpoint)
    with block_graph.alone(dom.UUIDString()):  # taken before a freeze, never during one
        if not quiesce:
            dom.backupBegin(backup_xml, checkpoint_xml, flags)
            return
        # libvirt 9 has no quiesce flag for backupBegin: freeze through the guest
        # agent around the instant the job (and its checkpoint) is taken.
        dom.fsFreeze()
        try:
            dom.backupBegin(backup_xml, checkpoint_xml, flags)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.fsThaw()


def backup_state(dom: libvirt.virDomain) -> tuple[str, BackupState] | None:
    try:
        desc = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP:
            return None  # the job has ended already (a small push ends at once)
        raise
    return desc, xml.parse_backup_xml(desc)


def _counter(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return None if value is None else int(value)


def job_stats(dom: libvirt.virDomain, *, completed: bool) -> JobStats:
    # KEEP_COMPLETED: libvirt otherwise hands completed stats out only once.
    flags = (
        libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        if completed
        else 0
    )
    try:
        stats: dict[str, Any] = dom.jobStats(flags)
    except libvirt.libvirtError as error:
        if completed or not backup_data_missing(error):
            raise
        return JobStats(active=True)  # still there, ending: look again
    job_type = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)
    success = stats.get("success")
    if success is None and job_type != libvirt.VIR_DOMAIN_JOB_NONE and completed:
        success = job_type == libvirt.VIR_DOMAIN_JOB_COMPLETED
    return JobStats(
        active=job_type not in _FINISHED_JOB_TYPES,
        success=None if success is None else bool(success),
        errmsg=stats.get("errmsg"),
        disk_total=_counter(stats, "disk_total"),
        disk_processed=_counter(stats, "disk_processed"),
        disk_temp_used=_counter(stats, "disk_temp_used"),
        disk_temp_total=_counter(stats, "disk_temp_total"),
    )


def abort(dom: libvirt.virDomain) -> None:
    dom.abortJob()
