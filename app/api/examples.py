"""Example request bodies, shown in Swagger UI (a menu per operation) and ReDoc.

tests/api/test_docs_offline.py checks each against its schema, and sends most of
them to the service."""

from __future__ import annotations

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
