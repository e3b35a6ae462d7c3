"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml, the systemd unit
and the Kubernetes manifests.

No container engine or cluster is needed: the files are parsed and checked against each
other and against the service itself (its settings, its CLI, its routes). The external
validators run when they are present (`docker compose config`, `systemd-analyze verify`)
and are skipped, with the reason, when they are not; the Kubernetes schemas come with the
dev extras (kubernetes-validate), so that check always runs. Building and starting the
image is tests/integration/test_image.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from app import cli
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
UNIT = ROOT / "deploy" / "systemd" / "vmbackup.service"
K8S = ROOT / "deploy" / "k8s" / "vmbackup.yaml"

ROOT_VARS = (
    "VMBACKUP_BACKUP_ROOT",
    "VMBACKUP_SCRATCH_ROOT",
    "VMBACKUP_RESTORE_ROOT",
    "VMBACKUP_SOCKET_ROOT",
)
A_TOKEN_LIST = json.dumps([{"name": "ci", "sha256": "ab" * 32, "scopes": ["read", "operate"]}])
SETTINGS_VARS = {f"VMBACKUP_{name.upper()}" for name in Settings.model_fields}


# --------------------------------------------------------------------------- helpers


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, $$."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env
        empty = present and env[name] == ""
        if op in (":-", "-"):
            if not present or (op == ":-" and empty):
                return str(arg)
        elif op in (":?", "?"):
            if not present or (op == ":?" and empty):
                raise MissingVariable(f"{name}: {arg}")
        return env.get(name, "")

    return _INTERPOLATION.sub(one, value)


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = load_compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    result = services[name]
    assert isinstance(result, dict)
    return result


def compose_environment(svc: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):  # ["KEY=value", ...]
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def bind_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each bind mount, short or long syntax."""
    mounts = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith(("/", ".")):
                mounts.append((parts[0], parts[1]))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def covered_by(path: str, mount_targets: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(t) or PurePosixPath(t) in p.parents for t in mount_targets)


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's own settings, read from exactly this environment."""
    for key in list(os.environ):
        if key.startswith("VMBACKUP_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continuation"
    return instructions


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args


def expand(value: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m[1], m[0]), value)


def stages() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base image, stage name, instructions) per FROM, ARGs expanded."""
    args = dockerfile_args()
    result: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = expand(rest, args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            result.append((words[0], name, []))
        elif result:
            result[-1][2].append((keyword, expand(rest, args)))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1][2]


def exec_form(rest: str) -> list[str]:
    assert rest.startswith("["), f"not the exec (JSON) form: {rest}"
    argv = json.loads(rest)
    assert isinstance(argv, list)
    return [str(word) for word in argv]


def last(instructions: list[tuple[str, str]], keyword: str) -> str | None:
    found = [rest for kw, rest in instructions if kw == keyword]
    return found[-1] if found else None


def image_command() -> list[str]:
    """The final stage's ENTRYPOINT + CMD, tini or another init left out."""
    instructions = final_stage()
    entrypoint = last(instructions, "ENTRYPOINT")
    cmd = last(instructions, "CMD")
    argv = (exec_form(entrypoint) if entrypoint else []) + (exec_form(cmd) if cmd else [])
    while argv and PurePosixPath(argv[0]).name in ("tini", "dumb-init", "--"):
        argv = argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    return argv


def apt_packages(instructions: list[tuple[str, str]]) -> set[str]:
    packages: set[str] = set()
    for keyword, rest in instructions:
        if keyword == "RUN" and "apt-get install" in rest:
            for command in rest.split("&&"):
                if "apt-get install" in command:
                    packages |= {
                        w for w in command.split() if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w)
                    }
    return packages - {"apt-get", "install"}


# .dockerignore (BuildKit: patterns in order, the last that matches wins, a pattern that
# matches a folder excludes what is in it)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
            continue
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip("/")))
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(path: str) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


# systemd


def unit_sections() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for line in UNIT.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        stripped, pending = pending + stripped, ""
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        assert current is not None, f"{UNIT.name}: a setting before any section: {stripped}"
        key, sep, value = stripped.partition("=")
        assert sep, f"{UNIT.name}: not a setting: {stripped}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_argv(command_line: str) -> list[str]:
    argv = shlex.split(command_line)
    argv[0] = argv[0].lstrip("-+@!:")  # systemd's command prefixes
    return argv


# Kubernetes


def k8s_documents() -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(K8S.read_text()) if doc is not None]
    assert documents, f"{K8S} holds no object"
    for doc in documents:
        assert isinstance(doc, dict)
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    return documents


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def deployment() -> dict[str, Any]:
    (only,) = k8s_objects("Deployment")
    return only


def pod_containers() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = deployment()["spec"]["template"]["spec"]
    return spec.get("initContainers", []), spec["containers"]


def main_container() -> dict[str, Any]:
    _, containers = pod_containers()
    (vmbackup,) = [c for c in containers if "serve" in c.get("command", []) + c.get("args", [])]
    return vmbackup


def container_argv(container: dict[str, Any]) -> list[str]:
    """command + args; when command is not given, the image's ENTRYPOINT (tini) runs args."""
    return [str(word) for word in container.get("command", []) + container.get("args", [])]


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# Every `vmbackup ...` command line the deployment files run


def vmbackup_commands() -> Iterator[tuple[str, list[str]]]:
    yield "Dockerfile CMD", image_command()
    for name, svc in load_compose()["services"].items():
        if "command" in svc:
            command = svc["command"]
            argv = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
            yield f"docker-compose.yml {name}", argv
    service_section = unit_sections()["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        for line in service_section.get(key, []):
            yield f"{UNIT.name} {key}", unit_argv(line)
    init_containers, containers = pod_containers()
    for container in init_containers + containers:
        yield f"{K8S.name} {container['name']}", container_argv(container)


# --------------------------------------------------------------------------- the CLI


def test_every_vmbackup_command_line_is_accepted_by_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    seen = set()
    for where, argv in vmbackup_commands():
        assert argv, f"{where}: no command"
        assert PurePosixPath(argv[0]).name == "vmbackup", f"{where}: runs {argv[0]}, not vmbackup"
        try:
            cli.main(argv[1:])
        except Parsed as parsed:
            namespace = parsed.args[0]
            seen.add(namespace.command)
        except SystemExit as error:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is refused by the CLI ({error})")
        else:
            pytest.fail(f"{where}: the CLI did not parse its arguments")
    assert seen == {"serve", "migrate"}


def test_every_vmbackup_setting_named_in_the_deploy_files_exists() -> None:
    """Settings ignore unknown variables: a misspelt one would silently do nothing."""
    named: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for name in re.findall(r"(VMBACKUP_[A-Z0-9_]+)=", rest):
                named[name] = "Dockerfile"
    for svc_name, svc in load_compose()["services"].items():
        for name in compose_environment(svc, {"VMBACKUP_TOKENS": A_TOKEN_LIST}):
            if name.startswith("VMBACKUP_"):
                named[name] = f"docker-compose.yml {svc_name}"
    init_containers, containers = pod_containers()
    for container in init_containers + containers:
        for name in container_env(container):
            named[name] = f"{K8S.name} {container['name']}"
    for text, where in ((UNIT.read_text(), UNIT.name),):
        for name in re.findall(r"\b(VMBACKUP_[A-Z0-9_]+)=", text):
            named[name] = where
    unknown = {name: where for name, where in named.items() if name not in SETTINGS_VARS}
    assert not unknown, f"not settings of the service: {unknown}"
    assert "VMBACKUP_TOKENS" in named
    assert "VMBACKUP_DATABASE_URL" in named


# --------------------------------------------------------------------------- docker-compose


def test_compose_parses_and_has_the_three_services() -> None:
    data = load_compose()
    assert {"postgres", "migrate", "vmbackup"} <= set(data["services"])


def test_vmbackup_waits_for_a_successful_migration_and_a_healthy_postgres() -> None:
    depends_on = service("vmbackup")["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["postgres"]["condition"] == "service_healthy"


def test_migrate_is_a_one_shot_after_a_healthy_postgres() -> None:
    migrate = service("migrate")
    assert migrate["command"][-1] == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) == "no"
    # The same image as the service
    assert migrate.get("image") == service("vmbackup").get("image")
    assert migrate.get("build") == service("vmbackup").get("build")


def test_postgres_has_a_pg_isready_healthcheck() -> None:
    postgres = service("postgres")
    assert str(postgres["image"]).startswith("postgres:15")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    assert postgres["healthcheck"].get("retries", 0) >= 3


def test_compose_database_url_points_at_the_postgres_service() -> None:
    for env in ({}, {"POSTGRES_PASSWORD": "s3cret"}):
        env = {"VMBACKUP_TOKENS": A_TOKEN_LIST, **env}
        postgres_env = compose_environment(service("postgres"), env)
        for name in ("migrate", "vmbackup"):
            url = make_url(compose_environment(service(name), env)["VMBACKUP_DATABASE_URL"])
            assert url.drivername == "postgresql+psycopg"
            assert url.host == "postgres"
            assert url.port in (None, 5432)
            assert url.username == postgres_env["POSTGRES_USER"]
            assert url.password == postgres_env["POSTGRES_PASSWORD"]
            assert url.database == postgres_env["POSTGRES_DB"]


def test_compose_requires_tokens_and_binds_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("migrate", "vmbackup"):  # both read the settings, both need the tokens
        with pytest.raises(MissingVariable, match="VMBACKUP_TOKENS"):
            compose_environment(service(name), {})
        with pytest.raises(MissingVariable, match="VMBACKUP_TOKENS"):
            compose_environment(service(name), {"VMBACKUP_TOKENS": ""})
        env = compose_environment(service(name), {"VMBACKUP_TOKENS": A_TOKEN_LIST})
        assert env["VMBACKUP_HOST"] == "0.0.0.0"
        assert env["VMBACKUP_TOKENS"] == A_TOKEN_LIST
        # The service's own settings accept this environment...
        settings = settings_from(env, monkeypatch)
        assert [token.name for token in settings.tokens] == ["ci"]
        assert settings.effective_database_url.startswith("postgresql+psycopg://")
        # ...and would refuse it without the tokens, which is why they are required.
        with pytest.raises(ValueError, match="VMBACKUP_TOKENS"):
            settings_from({**env, "VMBACKUP_TOKENS": ""}, monkeypatch)


def test_compose_serves_https_where_it_binds_every_address() -> None:
    # Off loopback, tokens (and the NBD URIs in answers) would cross the network in clear.
    for name in ("migrate", "vmbackup"):
        env = compose_environment(service(name), {"VMBACKUP_TOKENS": A_TOKEN_LIST})
        assert env["VMBACKUP_HOST"] == "0.0.0.0"
        assert env["VMBACKUP_TLS_CERT"]
        assert env["VMBACKUP_TLS_KEY"]
    vmbackup = service("vmbackup")
    env = compose_environment(vmbackup, {"VMBACKUP_TOKENS": A_TOKEN_LIST})
    targets = [target for _, target in bind_mounts(vmbackup)]
    for var in ("VMBACKUP_TLS_CERT", "VMBACKUP_TLS_KEY"):
        assert covered_by(env[var], targets), f"{var} is not on a mounted folder"
    check = " ".join(vmbackup["healthcheck"]["test"])
    assert "https" in check
    assert "VMBACKUP_TLS_CERT" in check


def test_compose_publishes_the_port_the_service_listens_on() -> None:
    vmbackup = service("vmbackup")
    port = compose_environment(vmbackup, {"VMBACKUP_TOKENS": A_TOKEN_LIST})["VMBACKUP_PORT"]
    targets = []
    for entry in vmbackup["ports"]:
        targets.append(
            str(entry).rsplit(":", 1)[-1] if isinstance(entry, str | int) else str(entry["target"])
        )
    assert port in targets


def test_compose_mounts_each_root_at_the_same_path_as_on_the_host() -> None:
    vmbackup = service("vmbackup")
    env = compose_environment(vmbackup, {"VMBACKUP_TOKENS": A_TOKEN_LIST})
    mounts = bind_mounts(vmbackup)
    for var in ROOT_VARS:
        root = env[var]
        assert PurePosixPath(root).is_absolute()
        assert (root, root) in mounts, f"{var}={root} is not bind-mounted at the same path"
    # No root is mounted from another host path either.
    for source, target in mounts:
        if target in {env[var] for var in ROOT_VARS}:
            assert source == target


def test_compose_mounts_the_libvirt_socket_for_the_default_uri() -> None:
    vmbackup = service("vmbackup")
    env = compose_environment(vmbackup, {"VMBACKUP_TOKENS": A_TOKEN_LIST})
    assert env["VMBACKUP_LIBVIRT_URI"] == "qemu:///system"
    targets = [target for _, target in bind_mounts(vmbackup)]
    assert covered_by("/var/run/libvirt/libvirt-sock", targets) or covered_by(
        "/run/libvirt/libvirt-sock", targets
    )


def test_a_liveness_healthcheck_on_livez() -> None:
    compose_check = service("vmbackup").get("healthcheck", {}).get("test", [])
    compose_text = compose_check if isinstance(compose_check, str) else " ".join(compose_check)
    image_check = last(final_stage(), "HEALTHCHECK") or ""
    assert "/livez" in compose_text or "/livez" in image_check
    for text in (compose_text, image_check):
        if text:
            assert "/readyz" not in text  # a database outage must not restart the container
            assert "8080" in text or "VMBACKUP_PORT" in text


COMPOSE_PLUGIN = (
    shutil.which("docker") is not None
    and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False
    ).returncode
    == 0
)


@pytest.mark.skipif(not COMPOSE_PLUGIN, reason="no docker CLI with the compose plugin here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = ["docker", "compose", "--env-file", str(empty_env_file), "-f", str(COMPOSE)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMBACKUP_", "POSTGRES_"))}
    refused = subprocess.run(
        [*base, "config"], capture_output=True, text=True, env=env, check=False
    )
    assert refused.returncode != 0
    assert "VMBACKUP_TOKENS" in refused.stderr
    done = subprocess.run(
        [*base, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**env, "VMBACKUP_TOKENS": A_TOKEN_LIST},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]["vmbackup"]
    assert resolved["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert resolved["environment"]["VMBACKUP_TOKENS"] == A_TOKEN_LIST


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_on_python_311_slim_bookworm_in_two_stages() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for image, _, _ in all_stages:
        assert image == "python:3.11-slim-bookworm"
    builder = [name for _, name, _ in all_stages[:-1] if name]
    assert builder, "the build stage has no name to copy from"


def test_dockerfile_compiles_libvirt_python_in_the_builder_only() -> None:
    builder = stages()[0][2]
    assert {"libvirt-dev", "pkg-config", "gcc"} <= apt_packages(builder)
    runtime = apt_packages(final_stage())
    assert {"libvirt0", "qemu-utils"} <= runtime
    assert not runtime & {"libvirt-dev", "gcc", "pkg-config"}


def test_dockerfile_copies_the_venv_to_the_path_it_was_made_at() -> None:
    builder_name = stages()[0][1]
    (venv,) = [
        m[1]
        for kw, rest in stages()[0][2]
        if kw == "RUN" and (m := re.search(r"python3? -m venv \"?([^\s\"]+)", rest))
    ]
    copies = [rest.split() for kw, rest in final_stage() if kw == "COPY"]
    assert [f"--from={builder_name}", venv, venv] in copies
    # The venv is installed from the project itself (pip install .)
    assert any(
        kw == "RUN" and "pip install" in rest and " ." in rest for kw, rest in stages()[0][2]
    )


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    sources = []
    for _, _, instructions in stages():
        for kw, rest in instructions:
            if kw in ("COPY", "ADD") and "--from=" not in rest:
                words = exec_form(rest) if rest.startswith("[") else rest.split()
                sources += [w for w in words[:-1] if not w.startswith("--")]
    assert {"pyproject.toml", "README.md", "app", "migrations"} <= {s.rstrip("/") for s in sources}
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    assert not ignored("app/main.py")
    assert not ignored("migrations/env.py")


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (".git", ".venv/bin/python", ".env", "tests/unit/x.py", "app/__pycache__/a.pyc"):
        assert ignored(path), f".dockerignore lets {path} into the build context"


def test_dockerfile_runs_vmbackup_serve_as_a_non_root_user() -> None:
    argv = image_command()
    assert argv[:2] == ["vmbackup", "serve"]
    user = last(final_stage(), "USER")
    assert user is not None, "the final stage has no USER"
    assert user.split(":")[0] not in ("root", "0")


def test_dockerfile_listens_on_every_address_so_tokens_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env: dict[str, str] = {}
    for kw, rest in final_stage():
        if kw == "ENV":
            env.update(dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", rest)))
    assert env.get("VMBACKUP_HOST") == "0.0.0.0"
    exposed = [rest for kw, rest in final_stage() if kw == "EXPOSE"]
    assert env.get("VMBACKUP_PORT", "8080") in " ".join(exposed)
    vmbackup_env = {k: v for k, v in env.items() if k.startswith("VMBACKUP_")}
    with pytest.raises(ValueError, match="VMBACKUP_TOKENS"):
        settings_from(vmbackup_env, monkeypatch)
    assert settings_from({**vmbackup_env, "VMBACKUP_TOKENS": A_TOKEN_LIST}, monkeypatch)


def test_healthcheck_and_probe_paths_are_routes_of_the_service() -> None:
    paths = create_app(Settings()).openapi()["paths"]
    for path in ("/livez", "/readyz"):
        assert "get" in paths.get(path, {}), f"the service has no GET {path}"


# --------------------------------------------------------------------------- systemd


def test_unit_runs_migrate_then_serve_from_the_venv() -> None:
    service_section = unit_sections()["Service"]
    (start,) = service_section["ExecStart"]
    assert unit_argv(start)[:2] == ["/opt/vmbackup/.venv/bin/vmbackup", "serve"]
    pre = [unit_argv(line) for line in service_section["ExecStartPre"]]
    assert ["/opt/vmbackup/.venv/bin/vmbackup", "migrate"] in pre
    assert service_section["Restart"] == ["on-failure"]
    assert service_section["EnvironmentFile"] == ["-/etc/vmbackup/env"]


def test_unit_order_and_directories() -> None:
    sections = unit_sections()
    after = " ".join(sections["Unit"]["After"]).split()
    assert {"libvirtd.service", "network-online.target"} <= set(after)
    assert "network-online.target" in " ".join(sections["Unit"].get("Wants", []))
    service_section = sections["Service"]
    defaults = Settings.model_fields
    # The settings' defaults are the directories systemd makes for the service.
    (state,) = service_section["StateDirectory"]
    assert defaults["data_dir"].default == Path("/var/lib") / state
    (runtime,) = service_section["RuntimeDirectory"]
    assert defaults["socket_root"].default == Path("/run") / runtime
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_is_hardened_but_can_reach_libvirt() -> None:
    service_section = {k: v[-1] for k, v in unit_sections()["Service"].items()}
    assert service_section.get("User") not in (None, "root", "0")
    assert "libvirt" in service_section.get("SupplementaryGroups", "").split()
    assert service_section["NoNewPrivileges"] == "yes"
    assert service_section["ProtectSystem"] == "strict"
    assert service_section["PrivateTmp"] == "yes"
    assert "AF_UNIX" in service_section["RestrictAddressFamilies"].split()


def _systemd_unit_dir() -> Path | None:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    return None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """In a throw-away root that has the system's units and a stand-in for the venv's
    `vmbackup` (verify checks that the commands exist)."""
    unit_dir = _systemd_unit_dir()
    if unit_dir is None:
        pytest.skip("no systemd unit directory to verify against")
    root = tmp_path / "root"
    shutil.copytree(unit_dir, root / "usr/lib/systemd/system", symlinks=True)
    executables = set()
    for key in ("ExecStartPre", "ExecStart"):
        for line in unit_sections()["Service"].get(key, []):
            executables.add(unit_argv(line)[0])
    for executable in executables:
        stand_in = root / executable.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", "--generators=no", UNIT.name],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify only warns (exit 0) about unknown keys or bad values: those count here.
    complaints = [line for line in output.splitlines() if UNIT.name in line]
    assert not complaints, "\n".join(complaints)


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_has_a_deployment_and_a_service_that_selects_its_pods() -> None:
    spec = deployment()["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (svc,) = k8s_objects("Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in main_container()["ports"]}
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in ports or target in ports.values()


def test_k8s_probes() -> None:
    container = main_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/livez"
    listening = int(container_env(container)["VMBACKUP_PORT"]["value"])
    for probe in (readiness, liveness):
        assert ports.get(probe["port"], probe["port"]) == listening


def test_k8s_migrates_before_serving() -> None:
    init_containers, _ = pod_containers()
    jobs = k8s_objects("Job")
    migrations = [c for c in init_containers if container_argv(c)[-1:] == ["migrate"]]
    for job in jobs:
        migrations += [
            c
            for c in job["spec"]["template"]["spec"]["containers"]
            if container_argv(c)[-1:] == ["migrate"]
        ]
    assert migrations, "no init container or Job runs `vmbackup migrate`"
    images = {c["image"] for c in migrations}
    assert images == {main_container()["image"]}


def test_k8s_takes_tokens_and_database_url_from_a_secret() -> None:
    init_containers, containers = pod_containers()
    for container in init_containers + containers:
        env = container_env(container)
        for name in ("VMBACKUP_TOKENS", "VMBACKUP_DATABASE_URL"):
            assert "secretKeyRef" in env[name].get("valueFrom", {}), (container["name"], name)
            assert "value" not in env[name]
        assert env["VMBACKUP_HOST"]["value"] == "0.0.0.0"


def test_k8s_serves_https_from_a_secret_and_probes_it_so() -> None:
    container = main_container()
    env = container_env(container)
    assert env["VMBACKUP_HOST"]["value"] == "0.0.0.0"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    for var in ("VMBACKUP_TLS_CERT", "VMBACKUP_TLS_KEY"):
        folder = str(PurePosixPath(env[var]["value"]).parent)
        assert folder in mounts, f"{var} is not on a mounted volume"
        assert "secret" in volumes[mounts[folder]]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe


def test_the_unit_s_example_serves_https_where_it_binds_every_address() -> None:
    text = UNIT.read_text()
    assert "VMBACKUP_HOST=0.0.0.0" in text
    assert "VMBACKUP_TLS_CERT=" in text
    assert "VMBACKUP_TLS_KEY=" in text


def test_k8s_roots_are_on_mounted_volumes_and_the_pod_is_not_root() -> None:
    container = main_container()
    env = container_env(container)
    mount_paths = [m["mountPath"] for m in container["volumeMounts"]]
    for var in ROOT_VARS:
        assert covered_by(env[var]["value"], mount_paths), f"{var} is not on a volume"
    pod_security = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    uid = re.search(r"useradd[^&]*--uid (\d+)", " ".join(r for k, r in final_stage() if k == "RUN"))
    assert uid is not None
    assert pod_security["runAsUser"] == int(uid[1])  # the image's user


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_k8s_objects_validate_against_the_kubernetes_schemas_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the schemas kubernetes-validate ships: no network is needed (or allowed)."""
    _refuse_network(monkeypatch)
    version = kubernetes_validate.latest_version()
    for doc in k8s_documents():
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validation_rejects_a_broken_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validator above is not a rubber stamp: a typo and a wrong type are caught."""
    _refuse_network(monkeypatch)
    version = kubernetes_validate.latest_version()
    (doc,) = [copy.deepcopy(d) for d in k8s_documents() if d["kind"] == "Deployment"]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(doc, version, strict=True)
    (doc,) = [copy.deepcopy(d) for d in k8s_documents() if d["kind"] == "Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError, match="integer"):
        kubernetes_validate.validate(doc, version, strict=True)
