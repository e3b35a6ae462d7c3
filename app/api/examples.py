"""Example request bodies, shown in Swagger UI (a menu per operation) and ReDoc,
and the answers to the main ones.

tests/api/test_docs_offline.py checks each against its schema, sends most of the
requests to the service, and compares its answers' fields with the examples'."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

HOST_CREATE: dict[str, Example] = {
    "tls": {
        "summary": "A host reached over TLS",
        "value": {"name": "kvm1", "uri": "qemu+tls://kvm1.example/system"},
    },
    "ssh": {
        "summary": "A host reached over SSH",
        "value": {"name": "kvm2", "uri": "qemu+ssh://backup@kvm2.example/system"},
    },
}

BACKUP_CREATE: dict[str, Example] = {
    "auto": {
        "summary": "Push, incremental when a base exists",
        "description": "Files go under the service's data directory; every disk is backed up.",
        "value": {"description": "nightly"},
    },
    "full-one-disk": {
        "summary": "Push, full, one disk, checkpoint named",
        "value": {
            "mode": "push",
            "kind": "full",
            "disks": [{"name": "vda", "driver": "qcow2"}],
            "checkpoint": {"name": "before-upgrade", "description": "before the upgrade"},
            "verify": True,
        },
    },
    "pull": {
        "summary": "Pull over NBD on a unix socket",
        "description": "The client reads the disks, then calls `finish`; expires after an hour.",
        "value": {"mode": "pull", "kind": "full", "ttl_seconds": 3600},
    },
}

CHECKPOINT_CREATE: dict[str, Example] = {
    "named": {
        "summary": "A named checkpoint of one disk",
        "value": {"name": "before-upgrade", "disks": [{"name": "vda"}]},
    },
    "all-disks": {"summary": "A checkpoint of every disk, named by the service", "value": {}},
}

RESTORE_CREATE: dict[str, Example] = {
    "all": {"summary": "Every disk, as qcow2", "value": {}},
    "raw": {"summary": "One disk, as raw", "value": {"disks": ["vda"], "format": "raw"}},
}

POLICY_CREATE: dict[str, Example] = {
    "nightly": {
        "summary": "Nightly, a full backup every 7 incrementals",
        "value": {
            "name": "nightly",
            "selector": {"host": "local", "exclude": ["scratch-vm"]},
            "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
            "full_every": {"incrementals": 7},
            "retention": {"last": 14, "weekly": 4},
        },
    },
}

POLICY_UPDATE: dict[str, Example] = {
    "pause": {"summary": "Pause the policy", "value": {"enabled": False}},
    "reschedule": {
        "summary": "Run at 03:30 UTC instead",
        "value": {"schedule": {"cron": "30 3 * * *"}},
    },
}

# Answers, as the service sent them to the first example of each request above.
_DOMAIN = {"name": "web1", "uuid": "6f1c1b8e-1d3e-4a51-9c1e-2b7f0c9d4a10"}
_BACKUP_ID = "2b722c30-ab99-4dd0-b117-7cc71d39801a"
HOST_OUT = {
    "name": "kvm1",
    "uri": "qemu+tls://kvm1.example/system",
    "state": "connected",
    "libvirt_version": "9.0.0",
    "hypervisor_version": "7.2.0",
    "error": None,
    "checked_at": "2026-11-26T03:55:51Z",
}
BACKUP_OUT = {
    "id": _BACKUP_ID,
    "host": "kvm1",
    "domain": _DOMAIN,
    "mode": "push",
    "kind": "full",
    "incremental": None,
    "checkpoint": "before-upgrade",
    "fallback_reason": None,
    "status": "queued",
    "progress": {
        "bytes_total": None,
        "bytes_processed": None,
        "temp_used": None,
        "temp_total": None,
        "updated_at": None,
    },
    "disks": [
        {
            "name": "vda",
            "backup": True,
            "backupmode": "full",
            "type": "file",
            "format": "qcow2",
            "target": f"/var/lib/vmbackup/backups/{_DOMAIN['uuid']}/{_BACKUP_ID}/vda.qcow2",
            "scratch": None,
            "export": None,
            "export_bitmap": None,
            "nbd_uri": None,
            "bytes": None,
        }
    ],
    "server": None,
    "libvirt_xml": None,
    "error": None,
    "description": None,
    "created_at": "2026-11-26T03:55:51Z",
    "started_at": None,
    "finished_at": None,
    "expires_at": None,
    "policy_id": None,
    "verification": {"status": "unverified", "checked_at": None, "detail": None},
}
CHECKPOINT_OUT = {
    "name": "before-upgrade",
    "parent": None,
    "created_at": "2026-11-26T03:55:51Z",
    "description": None,
    "disks": [
        {"name": "vda", "checkpoint": "bitmap", "bitmap": "before-upgrade", "size_bytes": None}
    ],
    "backup_id": None,
    "state": "ok",
    "state_reason": None,
    "in_libvirt": True,
}
POLICY_OUT = {
    "id": "a7636592-878b-454f-968a-6eaa589b65f9",
    "name": "nightly",
    "enabled": True,
    "selector": {"host": "local", "domains": None, "exclude": ["scratch-vm"]},
    "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
    "backup": {
        "mode": "push",
        "disks": None,
        "quiesce": False,
        "ttl_seconds": None,
        "description": None,
    },
    "full_every": {"incrementals": 7, "days": None},
    "retention": {"last": 14, "daily": None, "weekly": 4, "monthly": None},
    "verify": False,
    "next_run_at": "2026-11-27T01:00:00Z",
    "created_at": "2026-11-26T03:55:51Z",
}


def answer(status: int, example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entry that shows `example` as the success answer; FastAPI adds
    the response model's schema beside it."""
    return {status: {"content": {"application/json": {"example": example}}}}
