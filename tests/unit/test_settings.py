from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def _vmbackup(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_are_the_embedded_ones() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.libvirt_uri == "qemu:///system"
    assert settings.effective_database_url == "sqlite+aiosqlite:////var/lib/vmbackup/vmbackup.db"
    assert settings.backups_dir == Path("/var/lib/vmbackup/backups")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_a_public_address_without_tokens_is_refused() -> None:
    with pytest.raises(ValidationError, match="without VMBACKUP_TOKENS"):
        Settings(host="0.0.0.0")


def test_tokens_are_digests_not_secrets() -> None:
    with pytest.raises(ValidationError, match="SHA-256"):
        Settings(tokens=[{"name": "ops", "sha256": "my-secret", "scopes": ["read"]}])  # type: ignore[list-item]


def test_serve_on_a_public_address_without_tokens_stops_with_one_line() -> None:
    result = _vmbackup("serve", "--host", "0.0.0.0", "--no-migrate")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("vmbackup: invalid settings:")
    assert "VMBACKUP_TOKENS" in lines[0]


def test_invalid_settings_name_the_variable(tmp_path: Path) -> None:
    result = _vmbackup("migrate", VMBACKUP_PORT="not-a-port", VMBACKUP_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "VMBACKUP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_creates_an_sqlite_database_at_head(tmp_path: Path) -> None:
    result = _vmbackup("migrate", VMBACKUP_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vmbackup.db").stat().st_size > 0


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert missing == []
