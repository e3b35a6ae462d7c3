"""`uvicorn app.main:app --host 0.0.0.0` with no tokens, as the README once
suggested: the settings cannot see that address, so the app itself refuses every
client that is not loopback. Served for real in a network namespace the test
makes, where 192.0.2.1 (TEST-NET-1) is a local address: no packet leaves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
    ),
]

# Runs inside the namespace: a second address, the app on 0.0.0.0, two clients.
INSIDE = r"""
set -e
ip link set lo up
ip addr add 192.0.2.1/32 dev lo
"$PY" -m app.cli migrate >/dev/null
"$PY" -m uvicorn app.main:app --host 0.0.0.0 --port 8080 --log-level warning &
server=$!
trap 'kill $server' EXIT
"$PY" - <<'EOF'
import json, time, httpx
for _ in range(600):
    try:
        httpx.get("http://127.0.0.1:8080/livez", timeout=2)
        break
    except httpx.TransportError:
        time.sleep(0.1)
answers = {}
for peer in ("127.0.0.1", "192.0.2.1"):
    for path in ("/v1/hosts", "/livez"):
        response = httpx.get(f"http://{peer}:8080{path}", timeout=10)
        answers[f"{peer}{path}"] = [response.status_code, response.headers["content-type"]]
print(json.dumps(answers))
EOF
"""


def test_a_client_off_loopback_is_refused_however_the_app_is_bound(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env = {**clean, "PY": sys.executable, "VMBACKUP_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", INSIDE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["127.0.0.1/v1/hosts"][0] == 200
    assert answers["127.0.0.1/livez"][0] == 200
    assert answers["192.0.2.1/v1/hosts"] == [403, "application/problem+json"]
    assert answers["192.0.2.1/livez"] == [403, "application/problem+json"]
