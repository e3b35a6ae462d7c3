"""What the commands print for people: small tables on stdout. `--json` bypasses all of
this and prints the API's JSON as it came."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from app.client.api import JSON


def _size(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def table(console: Console, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(_text(cell) for cell in row))
    console.print(grid)


def hosts(console: Console, body: JSON) -> None:
    rows = [
        (h["name"], h["state"], h["uri"], h["libvirt_version"], h["error"]) for h in body["items"]
    ]
    table(console, ("HOST", "STATE", "URI", "LIBVIRT", "ERROR"), rows)


def domains(console: Console, body: JSON) -> None:
    def last(domain: JSON) -> str:
        backup = domain.get("last_backup")
        return "-" if backup is None else f"{backup['status']} {_text(backup['finished_at'])}"

    rows = [
        (d["name"], d["state"], ",".join(disk["name"] for disk in d["disks"]), last(d), d["uuid"])
        for d in body["items"]
    ]
    table(console, ("DOMAIN", "STATE", "DISKS", "LAST BACKUP", "UUID"), rows)


def _progress(backup: JSON) -> str:
    progress = backup.get("progress") or {}
    total, done = progress.get("bytes_total"), progress.get("bytes_processed")
    if not total:
        return "-"
    return f"{100 * (done or 0) // total}%"


def backups(console: Console, items: list[JSON]) -> None:
    rows = [
        (
            b["id"],
            b["domain"]["name"],
            b["mode"],
            b["kind"],
            b["status"],
            _progress(b),
            b["created_at"],
        )
        for b in items
    ]
    table(console, ("ID", "DOMAIN", "MODE", "KIND", "STATUS", "PROGRESS", "CREATED"), rows)


def _verification(v: JSON | None) -> str | None:
    if v is None or v["status"] == "unverified":
        return None
    return f"{v['status']}: {v['detail']}" if v["detail"] else v["status"]


def backup(console: Console, b: JSON) -> None:
    fields = [
        ("id", b["id"]),
        ("host", b["host"]),
        ("domain", f"{b['domain']['name']} ({b['domain']['uuid']})"),
        ("mode / kind", f"{b['mode']} / {b['kind']}"),
        ("status", b["status"]),
        ("progress", _progress(b)),
        ("base", b["incremental"]),
        ("checkpoint", b["checkpoint"]),
        ("fallback", b["fallback_reason"]),
        ("error", None if b["error"] is None else f"{b['error']['code']}: {b['error']['message']}"),
        ("created", b["created_at"]),
        ("finished", b["finished_at"]),
        ("expires", b["expires_at"]),
        ("verification", _verification(b.get("verification"))),
        ("policy", b.get("policy_id")),
    ]
    table(console, ("FIELD", "VALUE"), [(k, v) for k, v in fields if v is not None])
    disks = [
        (
            d["name"],
            d["backupmode"],
            d["format"],
            _size(d["bytes"]),
            d["nbd_uri"] or d["target"],
        )
        for d in b["disks"]
        if d["backup"]
    ]
    table(console, ("DISK", "MODE", "FORMAT", "SIZE", "TARGET / NBD URI"), disks)


def chain(console: Console, body: JSON) -> None:
    rows = [
        (disk, i, link["kind"], link["backup_id"], link["checkpoint"], link["format"], link["file"])
        for disk, links in body["disks"].items()
        for i, link in enumerate(links)
    ]
    table(console, ("DISK", "#", "KIND", "BACKUP", "CHECKPOINT", "FORMAT", "FILE"), rows)


def restore(console: Console, r: JSON) -> None:
    table(
        console,
        ("FIELD", "VALUE"),
        [
            ("id", r["id"]),
            ("backup", r["backup_id"]),
            ("status", r["status"]),
            ("format", r["format"]),
        ],
    )
    if r.get("error"):
        console.print(f"error: {r['error']['code']}: {r['error']['message']}", markup=False)
    rows = [(d["name"], d["format"], _size(d["bytes"]), d["file"]) for d in r["disks"]]
    table(console, ("DISK", "FORMAT", "SIZE", "FILE"), rows)


def checkpoints(console: Console, body: JSON) -> None:
    rows = [
        (
            c["name"],
            c["parent"],
            c["state"],
            "yes" if c["in_libvirt"] else "no",
            ",".join(d["name"] for d in c["disks"] if d["checkpoint"] == "bitmap"),
            c["backup_id"],
            c["created_at"],
        )
        for c in body["items"]
    ]
    table(
        console,
        ("CHECKPOINT", "PARENT", "STATE", "IN LIBVIRT", "BITMAPS", "BACKUP", "CREATED"),
        rows,
    )


def checkpoint(console: Console, c: JSON) -> None:
    checkpoints(console, {"items": [c]})
    rows = [
        (d["name"], d["checkpoint"], d["bitmap"], _size(d.get("size_bytes"))) for d in c["disks"]
    ]
    table(console, ("DISK", "CHECKPOINT", "BITMAP", "CHANGED SINCE"), rows)


def reconcile(console: Console, body: JSON) -> None:
    for key in ("redefined", "imported", "updated"):
        names = ", ".join(body.get(key) or []) or "-"
        console.print(f"{key}: {names}", markup=False, highlight=False)
    broken = "; ".join(f"{b['name']} ({b['reason']})" for b in body.get("broken") or [])
    console.print(f"broken: {broken or '-'}", markup=False, highlight=False)
    console.print(f"unchanged: {body['unchanged']}", markup=False, highlight=False)


def event(console: Console, e: JSON) -> None:
    what = e["status"]
    if e.get("progress"):
        total, done = e["progress"].get("bytes_total"), e["progress"].get("bytes_processed")
        what = f"{what} {_size(done)}/{_size(total)}"
    elif e.get("previous_status"):
        what = f"{e['previous_status']} -> {what}"
    line = f"{e['at']} {e['backup_id']} {e['host']}/{e['domain']['name']} {what}"
    if e.get("message"):
        line += f": {e['message']}"
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def policies(console: Console, body: JSON) -> None:
    rows = [
        (
            p["name"],
            "enabled" if p["enabled"] else "paused",
            p["schedule"]["cron"],
            p["schedule"]["timezone"],
            p["selector"]["host"],
            ", ".join(p["selector"]["domains"] or ["(all)"]),
            p["next_run_at"],
            p["id"],
        )
        for p in body["items"]
    ]
    table(console, ("POLICY", "STATE", "CRON", "ZONE", "HOST", "DOMAINS", "NEXT RUN", "ID"), rows)


def policy_runs(console: Console, body: JSON) -> None:
    rows = [
        (r["scheduled_for"], r["domain"]["name"], r["backup_id"] or "-", r["skipped"])
        for r in body["items"]
    ]
    table(console, ("SCHEDULED FOR", "DOMAIN", "BACKUP", "SKIPPED"), rows)
