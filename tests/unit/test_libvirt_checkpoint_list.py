"""Listing a domain's checkpoints while another worker prunes them: a checkpoint
listed, then deleted before its XML is read, makes the list be read again, not a
404 for the request that listed (found in CI: two replicas, one pruning)."""

from __future__ import annotations

import libvirt
import pytest

from app.libvirt import domains
from tests.unit.test_libvirt_jobs import _Error

XML = (
    "<domaincheckpoint><name>{name}</name><creationTime>1764100000</creationTime>"
    "<disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>"
)


class _Checkpoint:
    def __init__(self, name: str, gone: bool) -> None:
        self.name, self.gone = name, gone

    def getXMLDesc(self, flags: int = 0) -> str:
        if self.gone:
            raise _Error(libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT, f"no checkpoint {self.name}")
        return XML.format(name=self.name)


class _Domain:
    """The first listing names a checkpoint pruned meanwhile; the next does not."""

    def __init__(self, listings: list[list[_Checkpoint]]) -> None:
        self.listings = listings

    def listAllCheckpoints(self, flags: int = 0) -> list[_Checkpoint]:
        return self.listings.pop(0)


def test_a_checkpoint_pruned_while_listed_makes_the_list_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domains, "_LIST_RETRY_SECONDS", 0)
    dom = _Domain(
        [
            [_Checkpoint("old", gone=True), _Checkpoint("new", gone=False)],
            [_Checkpoint("new", gone=False)],
        ]
    )
    listed = domains.list_checkpoints(dom)  # type: ignore[arg-type]
    assert [checkpoint.name for checkpoint in listed] == ["new"]


def test_a_checkpoint_that_stays_unreadable_is_still_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domains, "_LIST_RETRY_SECONDS", 0)
    dom = _Domain([[_Checkpoint("old", gone=True)] for _ in range(domains._LIST_ATTEMPTS)])
    with pytest.raises(libvirt.libvirtError):
        domains.list_checkpoints(dom)  # type: ignore[arg-type]
