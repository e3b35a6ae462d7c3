"""The client's commands (click). Each one is a request or two to the API and a render;
`--json` prints the API's JSON instead, for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import click
from rich.console import Console

from app.client import render
from app.client.api import DEFAULT_URL, JSON, Api, ClientError, dumps
from app.client.follow import Exit, exit_code, follow_backup, follow_restore

P = ParamSpec("P")
R = TypeVar("R")

MODES = click.Choice(["push", "pull"])
KINDS = click.Choice(["full", "incremental", "auto"])
STATUSES = click.Choice(
    ["queued", "starting", "running", "ready", "finishing", "succeeded", "failed", "cancelled"]
)
INTERRUPTED = 130  # the shell's code for Ctrl-C
# Tables are as wide as their content; a pipe or a file must not fold them at 80 columns.
PIPE_WIDTH = 1000


@dataclass
class Context:
    api: Api
    json: bool
    out: Console
    err: Console

    def emit(self, body: object, human: Callable[[], None]) -> None:
        if self.json:
            click.echo(dumps(body))
        else:
            human()


def _consoles() -> tuple[Console, Console]:
    out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)
    return out, err


def pass_context(command: Callable[Concatenate[Context, P], R]) -> Callable[P, R]:
    """Hands the command the Context; `--json` may be given after the command too."""

    def wrapper(click_ctx: click.Context, /, *args: P.args, **kwargs: P.kwargs) -> R:
        json_flag = kwargs.pop("json_flag")
        ctx = click_ctx.find_object(Context)
        assert ctx is not None
        ctx.json = ctx.json or bool(json_flag)
        return command(ctx, *args, **kwargs)

    wrapper.__name__ = command.__name__  # click names the command after the function
    json_option = click.option("--json", "json_flag", is_flag=True, help="print the API's JSON")
    return json_option(click.pass_context(wrapper))


class DefaultGroup(click.Group):
    """A group that runs `default` when the first word is not one of its commands:
    `restore BACKUP` and `restore show RESTORE` side by side."""

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


HELP = """The vmbackup service's client: back up libvirt domains over its HTTP API.

`vmbackup serve` and `vmbackup migrate` run the service itself."""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="VMBACKUP_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="the service (VMBACKUP_URL)",
)
@click.option(
    "--token", envvar="VMBACKUP_TOKEN", default=None, help="bearer token (VMBACKUP_TOKEN)"
)
@click.option("--json", "json_flag", is_flag=True, help="print the API's JSON")
@click.pass_context
def cli(click_ctx: click.Context, url: str, token: str | None, json_flag: bool) -> None:
    out, err = _consoles()
    api = Api(url.rstrip("/"), token or None)
    click_ctx.call_on_close(api.close)
    click_ctx.obj = Context(api=api, json=json_flag, out=out, err=err)


# -- hosts and domains -----------------------------------------------------------------


@cli.command(help="Hypervisor hosts and their connection state.")
@pass_context
def hosts(ctx: Context) -> None:
    body = ctx.api.get("/v1/hosts")
    ctx.emit(body, lambda: render.hosts(ctx.out, body))


@cli.command(help="Domains of HOST (default: local), read live from libvirt.")
@click.argument("host", default="local")
@pass_context
def domains(ctx: Context, host: str) -> None:
    body = ctx.api.get(f"/v1/hosts/{host}/domains")
    ctx.emit(body, lambda: render.domains(ctx.out, body))


# -- backups ---------------------------------------------------------------------------


@cli.group(help="Start, follow, end and remove backups.")
def backup() -> None:
    pass


def _finish_following(ctx: Context, backup_id: str, until_ready: bool = False) -> None:
    try:
        final = follow_backup(ctx.api, backup_id, ctx.err, until_ready=until_ready)
    except KeyboardInterrupt:
        # Only the watching stops: the backup is the service's, and goes on.
        ctx.err.print(
            f"stopped following {backup_id}; it goes on "
            f"(vmbackup backup wait {backup_id} | vmbackup backup cancel {backup_id})",
            markup=False,
        )
        raise SystemExit(INTERRUPTED) from None
    ctx.emit(final, lambda: render.backup(ctx.out, final))
    if final.get("error"):
        ctx.err.print(f"{final['error']['code']}: {final['error']['message']}", markup=False)
    raise SystemExit(exit_code(final["status"]))


def _show(ctx: Context, body: JSON) -> None:
    ctx.emit(body, lambda: render.backup(ctx.out, body))


@backup.command(
    "start",
    help="Start a backup of DOMAIN; with --wait, follow it to its end "
    "(exit 0 succeeded, 1 failed, 3 cancelled).",
)
@click.argument("domain")
@click.option("--host", default="local", show_default=True)
@click.option("--mode", type=MODES, default="push", show_default=True)
@click.option("--kind", type=KINDS, default="auto", show_default=True)
@click.option("--disk", "disks", multiple=True, help="back up only these disks (repeatable)")
@click.option("--description", default=None)
@click.option("--wait", is_flag=True, help="follow the backup to its end with a progress bar")
@pass_context
def backup_start(
    ctx: Context,
    domain: str,
    host: str,
    mode: str,
    kind: str,
    disks: tuple[str, ...],
    description: str | None,
    wait: bool,
) -> None:
    request: JSON = {"mode": mode, "kind": kind}
    if disks:
        request["disks"] = [{"name": name} for name in disks]
    if description is not None:
        request["description"] = description
    started = ctx.api.post(f"/v1/hosts/{host}/domains/{domain}/backups", request)
    if not wait:
        _show(ctx, started)
        return
    ctx.err.print(f"backup {started['id']} of {domain} ({mode}, {kind})", markup=False)
    _finish_following(ctx, started["id"])


@backup.command(
    "wait",
    help="Follow BACKUP_ID to its end (or, with --ready, until a pull "
    "export is ready); exit 0 succeeded or ready, 1 failed, 3 cancelled.",
)
@click.argument("backup_id")
@click.option("--ready", is_flag=True, help="return once a pull backup's exports are ready")
@pass_context
def backup_wait(ctx: Context, backup_id: str, ready: bool) -> None:
    _finish_following(ctx, backup_id, until_ready=ready)


@backup.command("list", help="Backups, newest first.")
@click.option("--host", default=None)
@click.option("--domain", default=None, help="name or UUID")
@click.option("--status", type=STATUSES, default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=None)
@click.option("--cursor", default=None, help="next_cursor of the previous page")
@pass_context
def backup_list(
    ctx: Context,
    host: str | None,
    domain: str | None,
    status: str | None,
    limit: int | None,
    cursor: str | None,
) -> None:
    query = {"host": host, "domain": domain, "status": status, "limit": limit, "cursor": cursor}
    body = ctx.api.get("/v1/backups", query)
    ctx.emit(body, lambda: render.backups(ctx.out, body["items"]))


@backup.command("show", help="One backup: status, progress, disks and their NBD URIs.")
@click.argument("backup_id")
@pass_context
def backup_show(ctx: Context, backup_id: str) -> None:
    _show(ctx, ctx.api.get(f"/v1/backups/{backup_id}"))


@backup.command("finish", help="A ready pull backup: the client has read what it needs.")
@click.argument("backup_id")
@click.option("--wait", is_flag=True, help="follow it to its end")
@pass_context
def backup_finish(ctx: Context, backup_id: str, wait: bool) -> None:
    body = ctx.api.post(f"/v1/backups/{backup_id}/finish")
    if wait:
        _finish_following(ctx, backup_id)
    _show(ctx, body)


@backup.command("cancel", help="Cancel a queued backup, or abort an active one's job.")
@click.argument("backup_id")
@click.option("--wait", is_flag=True, help="follow it to its end")
@pass_context
def backup_cancel(ctx: Context, backup_id: str, wait: bool) -> None:
    body = ctx.api.post(f"/v1/backups/{backup_id}/cancel")
    if wait:
        _finish_following(ctx, backup_id)
    _show(ctx, body)


@backup.command("delete", help="Delete a terminal backup and its files.")
@click.argument("backup_id")
@click.option("--cascade", is_flag=True, help="also delete later backups whose chain needs it")
@pass_context
def backup_delete(ctx: Context, backup_id: str, cascade: bool) -> None:
    ctx.api.delete(f"/v1/backups/{backup_id}", {"cascade": "true" if cascade else None})
    ctx.emit({"deleted": backup_id}, lambda: ctx.err.print(f"deleted {backup_id}", markup=False))


@backup.command("verify", help="Re-read a push backup's chain against its recorded digests.")
@click.argument("backup_id")
@click.option("--wait", is_flag=True, help="wait for the verdict (exit 0 ok, 1 corrupt)")
@pass_context
def backup_verify(ctx: Context, backup_id: str, wait: bool) -> None:
    body = ctx.api.post(f"/v1/backups/{backup_id}/verify")
    while wait and body["verification"]["status"] == "running":
        time.sleep(0.5)
        body = ctx.api.get(f"/v1/backups/{backup_id}")
    ctx.emit(body, lambda: render.backup(ctx.out, body))
    if wait and body["verification"]["status"] != "ok":
        raise SystemExit(Exit.FAILED)


@backup.command("chain", help="Each disk's files from its full backup to this one.")
@click.argument("backup_id")
@pass_context
def backup_chain(ctx: Context, backup_id: str) -> None:
    body = ctx.api.get(f"/v1/backups/{backup_id}/chain")
    ctx.emit(body, lambda: render.chain(ctx.out, body))


# -- restores --------------------------------------------------------------------------


@cli.group(
    cls=DefaultGroup,
    default="start",
    help="restore BACKUP_ID [--disk NAME] [--format qcow2|raw] [--wait] | restore show RESTORE_ID",
)
def restore() -> None:
    pass


@restore.command("start", help="Write standalone images of BACKUP_ID's disks as they were.")
@click.argument("backup_id")
@click.option("--disk", "disks", multiple=True, help="only these disks (repeatable)")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["qcow2", "raw"]),
    default="qcow2",
    show_default=True,
)
@click.option("--wait", is_flag=True, help="wait for the images (exit 0 succeeded, 1 failed)")
@pass_context
def restore_start(
    ctx: Context, backup_id: str, disks: tuple[str, ...], image_format: str, wait: bool
) -> None:
    request: JSON = {"format": image_format}
    if disks:
        request["disks"] = list(disks)
    body = ctx.api.post(f"/v1/backups/{backup_id}/restores", request)
    if wait:
        body = follow_restore(ctx.api, body["id"], ctx.err)
    ctx.emit(body, lambda: render.restore(ctx.out, body))
    raise SystemExit(exit_code(body["status"]))


@restore.command("show", help="One restore: status and image files.")
@click.argument("restore_id")
@pass_context
def restore_show(ctx: Context, restore_id: str) -> None:
    body = ctx.api.get(f"/v1/restores/{restore_id}")
    ctx.emit(body, lambda: render.restore(ctx.out, body))


# -- checkpoints -----------------------------------------------------------------------

HOST_OPTION = click.option("--host", default="local", show_default=True)


def _checkpoints(host: str, domain: str) -> str:
    return f"/v1/hosts/{host}/domains/{domain}/checkpoints"


@cli.group(help="A domain's checkpoints: list, show, create, delete, reconcile.")
def checkpoints() -> None:
    pass


@checkpoints.command("list", help="DOMAIN's checkpoints, parents first.")
@click.argument("domain")
@HOST_OPTION
@pass_context
def checkpoints_list(ctx: Context, domain: str, host: str) -> None:
    body = ctx.api.get(_checkpoints(host, domain))
    ctx.emit(body, lambda: render.checkpoints(ctx.out, body))


@checkpoints.command("show", help="One checkpoint, with the data changed since it.")
@click.argument("domain")
@click.argument("name")
@HOST_OPTION
@pass_context
def checkpoints_show(ctx: Context, domain: str, name: str, host: str) -> None:
    body = ctx.api.get(f"{_checkpoints(host, domain)}/{name}")
    ctx.emit(body, lambda: render.checkpoint(ctx.out, body))


@checkpoints.command("create", help="A checkpoint of DOMAIN now (a bitmap on each disk).")
@click.argument("domain")
@HOST_OPTION
@click.option("--name", default=None)
@click.option("--description", default=None)
@pass_context
def checkpoints_create(
    ctx: Context, domain: str, host: str, name: str | None, description: str | None
) -> None:
    request = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    body = ctx.api.post(_checkpoints(host, domain), request)
    ctx.emit(body, lambda: render.checkpoint(ctx.out, body))


@checkpoints.command(
    "delete", help="Delete checkpoint NAME of DOMAIN (its bitmap is merged into the parent's)."
)
@click.argument("domain")
@click.argument("name")
@HOST_OPTION
@click.option("--children", is_flag=True, help="with its descendants")
@click.option("--metadata-only", is_flag=True, help="leave the bitmaps in the disks")
@pass_context
def checkpoints_delete(
    ctx: Context, domain: str, name: str, host: str, children: bool, metadata_only: bool
) -> None:
    flags = {"children": children or None, "metadata_only": metadata_only or None}
    query = {k: "true" for k, v in flags.items() if v}
    ctx.api.delete(f"{_checkpoints(host, domain)}/{name}", query)
    ctx.emit({"deleted": name}, lambda: ctx.err.print(f"deleted {name}", markup=False))


@checkpoints.command("reconcile", help="Bring the stored lineage and libvirt in line.")
@click.argument("domain")
@HOST_OPTION
@click.option("--dry-run", is_flag=True, help="report, change nothing")
@pass_context
def checkpoints_reconcile(ctx: Context, domain: str, host: str, dry_run: bool) -> None:
    query = {"dry_run": "true" if dry_run else None}
    body = ctx.api.post(f"{_checkpoints(host, domain)}/reconcile", params=query)
    ctx.emit(body, lambda: render.reconcile(ctx.out, body))


# -- policies --------------------------------------------------------------------------


@cli.group(help="Scheduled backups: list, show, create, run, runs, pause, resume, delete.")
def policies() -> None:
    pass


@policies.command("list", help="Policies with their schedule and next run.")
@pass_context
def policies_list(ctx: Context) -> None:
    body = ctx.api.get("/v1/policies")
    ctx.emit(body, lambda: render.policies(ctx.out, body))


@policies.command("show", help="One policy, as JSON.")
@click.argument("policy_id")
@pass_context
def policies_show(ctx: Context, policy_id: str) -> None:
    click.echo(dumps(ctx.api.get(f"/v1/policies/{policy_id}")))


@policies.command("create", help="A policy from a JSON file (the body of POST /v1/policies).")
@click.argument("file", type=click.File("r"))
@pass_context
def policies_create(ctx: Context, file: Any) -> None:
    body = ctx.api.post("/v1/policies", json.load(file))
    ctx.emit(body, lambda: render.policies(ctx.out, {"items": [body]}))


@policies.command("run", help="Run a policy now: a backup queued per selected domain.")
@click.argument("policy_id")
@pass_context
def policies_run(ctx: Context, policy_id: str) -> None:
    body = ctx.api.post(f"/v1/policies/{policy_id}/run")
    ctx.emit(body, lambda: render.policy_runs(ctx.out, body))


@policies.command("runs", help="A policy's runs, newest first, with their backups.")
@click.argument("policy_id")
@pass_context
def policies_runs(ctx: Context, policy_id: str) -> None:
    body = ctx.api.get(f"/v1/policies/{policy_id}/runs")
    ctx.emit(body, lambda: render.policy_runs(ctx.out, body))


def _set_enabled(ctx: Context, policy_id: str, enabled: bool) -> None:
    body = ctx.api.patch(f"/v1/policies/{policy_id}", {"enabled": enabled})
    ctx.emit(body, lambda: render.policies(ctx.out, {"items": [body]}))


@policies.command("pause", help="Stop a policy's schedule (its backups stay).")
@click.argument("policy_id")
@pass_context
def policies_pause(ctx: Context, policy_id: str) -> None:
    _set_enabled(ctx, policy_id, False)


@policies.command("resume", help="Run a paused policy again from its next slot.")
@click.argument("policy_id")
@pass_context
def policies_resume(ctx: Context, policy_id: str) -> None:
    _set_enabled(ctx, policy_id, True)


@policies.command("delete", help="Delete a policy and its runs (its backups stay).")
@click.argument("policy_id")
@pass_context
def policies_delete(ctx: Context, policy_id: str) -> None:
    ctx.api.delete(f"/v1/policies/{policy_id}")
    ctx.emit({"deleted": policy_id}, lambda: ctx.err.print(f"deleted {policy_id}", markup=False))


# -- events ----------------------------------------------------------------------------


@cli.command(help="Follow every backup's changes (Ctrl-C to stop); --json: one JSON per line.")
@click.option("--host", default=None)
@click.option("--domain", default=None, help="name or UUID")
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=None,
    help="replay from after this event id (0: every kept event), then follow",
)
@pass_context
def events(ctx: Context, host: str | None, domain: str | None, after: int | None) -> None:
    query = {"host": host, "domain": domain}
    since = None if after is None else str(after)
    for event in ctx.api.events("/v1/events", query, after=since):
        if ctx.json:
            click.echo(event.data)  # one line each: JSON lines for scripts
        else:
            render.event(ctx.out, event.json())
        sys.stdout.flush()


def run(argv: Sequence[str]) -> None:
    """Run the client; a ClientError is one line on stderr and exit 4."""
    try:
        cli.main(list(argv), prog_name="vmbackup", standalone_mode=False)
    except ClientError as error:
        click.echo(f"vmbackup: {error}", err=True)
        raise SystemExit(Exit.PROBLEM) from None
    except click.ClickException as error:
        error.show()
        raise SystemExit(error.exit_code) from None
    except (click.exceptions.Abort, KeyboardInterrupt):
        raise SystemExit(INTERRUPTED) from None
