"""Job statistics while libvirt ends a backup job: it frees the job's data a
moment before the job ends, and statistics asked in between fail with an
internal error. That is a job still there, ending, not a failed backup."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from app.libvirt import jobs


class _Error(libvirt.libvirtError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self._code, self._message = code, message

    def get_error_code(self) -> int:
        return self._code

    def get_error_message(self) -> str:
        return self._message


class _Domain:
    """Only `jobStats`, failing as libvirt 9 does (qemuBackupGetJobInfoStats)."""

    def __init__(self, error: libvirt.libvirtError) -> None:
        self.error = error

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        raise self.error


ENDING = _Error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: backup job data missing")


def test_a_backup_job_whose_data_is_gone_is_still_active() -> None:
    stats = jobs.job_stats(_Domain(ENDING), completed=False)  # type: ignore[arg-type]
    assert stats.active
    assert stats.disk_total is None


@pytest.mark.parametrize(
    ("error", "completed"),
    [
        (_Error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: something else"), False),
        (_Error(libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running"), False),
        (ENDING, True),  # completed statistics do not come from the job's data
    ],
)
def test_other_errors_still_raise(error: libvirt.libvirtError, completed: bool) -> None:
    with pytest.raises(libvirt.libvirtError):
        jobs.job_stats(_Domain(error), completed=completed)  # type: ignore[arg-type]
