"""The libvirt XML builders and parsers (app/libvirt/xml.py).

Builders are checked against libvirt's own RelaxNG schemas, the ones libvirtd
validates `virDomainBackupBegin` input with. Parser samples were captured from a
real libvirtd 9.0 / QEMU 7.2 (a throw-away TCG domain with a qcow2 `vda`, a raw
`vdb` and an empty cdrom `sda`) with `virsh backup-dumpxml`, `checkpoint-dumpxml`
and `dumpxml`, and are kept verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from app.errors import HypervisorError, InvalidRequest
from app.hypervisor import (
    BackupSpec,
    CheckpointDiskSpec,
    CheckpointSpec,
    DiskBackupMode,
    DiskBackupSpec,
    NbdServerSpec,
)
from app.libvirt.xml import (
    NAME_PATTERN,
    DiskXml,
    build_backup_xml,
    build_checkpoint_xml,
    parse_backup_xml,
    parse_checkpoint_xml,
    parse_domain_disks,
)

SCHEMAS = Path("/usr/share/libvirt/schemas")

# --- samples captured from libvirtd 9.0 ------------------------------------------

# <domainbackup mode='push'><incremental>cp3</incremental> with an explicit target,
# checkpoint cp4, while the job ran.
PUSH_INCREMENTAL = """\
<domainbackup mode='push'>
  <incremental>cp3</incremental>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='cp3' index='16'>
      <driver type='qcow2'/>
      <target file='/var/tmp/xmltest-5410806b.vda.inc.qcow2'/>
    </disk>
    <disk name='vdb' backup='no'/>
    <disk name='sda' backup='no'/>
  </disks>
</domainbackup>
"""

# `<domainbackup/>` and no checkpoint: libvirt chose every name and format itself.
PUSH_GENERATED = """\
<domainbackup mode='push'>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='full' index='17'>
      <driver type='qcow2'/>
      <target file='/var/tmp/xmltest-5410806b.qcow2.1795641799'/>
    </disk>
    <disk name='vdb' backup='yes' type='file' backupmode='full' index='18'>
      <driver type='qcow2'/>
      <target file='/var/tmp/xmltest-5410806b-b.raw.1795641799'/>
    </disk>
    <disk name='sda' backup='no'/>
  </disks>
</domainbackup>
"""

PULL_UNIX_INCREMENTAL = """\
<domainbackup mode='pull'>
  <incremental>cp1</incremental>
  <server transport='unix' socket='/var/tmp/xmltest-5410806b.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='cp1' \
exportname='vda' exportbitmap='backup-vda' index='8'>
      <driver type='qcow2'/>
      <scratch file='/var/tmp/xmltest-5410806b.vda.scratch'/>
    </disk>
    <disk name='vdb' backup='no'/>
    <disk name='sda' backup='no'/>
  </disks>
</domainbackup>
"""

# Asked without a tls attribute: libvirt echoes none.
PULL_TCP_FULL = """\
<domainbackup mode='pull'>
  <server transport='tcp' name='127.0.0.1' port='10899'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='full' exportname='vda' index='14'>
      <driver type='qcow2'/>
      <scratch file='/var/tmp/xmltest-5410806b.vda.scratch'/>
    </disk>
    <disk name='vdb' backup='yes' type='file' backupmode='full' exportname='vdb' index='15'>
      <driver type='qcow2'/>
      <scratch file='/var/tmp/xmltest-5410806b.vdb.scratch'/>
    </disk>
    <disk name='sda' backup='no'/>
  </disks>
</domainbackup>
"""

# Asked with tls='no': libvirt echoes it, before the name.
PULL_TCP_TLS_NO_SERVER = "<server transport='tcp' tls='no' name='127.0.0.1' port='10899'/>"
# tls='yes' needs the host's backup TLS certificates (absent on the capture host, where
# libvirt refused with "Unable to access credentials /etc/pki/qemu/ca-cert.pem"), so this
# one is the captured document with the attribute virDomainBackupDefFormat would write.
PULL_TCP_TLS_YES_SERVER = "<server transport='tcp' tls='yes' name='127.0.0.1' port='10899'/>"

# virsh checkpoint-dumpxml --size --no-domain
CHECKPOINT_SIZED = """\
<domaincheckpoint>
  <name>cp5</name>
  <description>standalone &amp; &lt;special&gt;</description>
  <parent>
    <name>cp4</name>
  </parent>
  <creationTime>1795641814</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='cp5' size='3145728'/>
    <disk name='vdb' checkpoint='no'/>
    <disk name='sda' checkpoint='no'/>
  </disks>
</domaincheckpoint>
"""

# virsh checkpoint-dumpxml --no-domain of the first checkpoint: no parent, no size.
CHECKPOINT_ROOT = """\
<domaincheckpoint>
  <name>cp1</name>
  <description>first one</description>
  <creationTime>1795641752</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='cp1'/>
    <disk name='vdb' checkpoint='no'/>
    <disk name='sda' checkpoint='no'/>
  </disks>
</domaincheckpoint>
"""

# virsh checkpoint-dumpxml (flags 0): what redefinition needs, <domain> included.
CHECKPOINT_WITH_DOMAIN = """\
<domaincheckpoint>
  <name>cp3</name>
  <description>pull full</description>
  <parent>
    <name>cp2</name>
  </parent>
  <creationTime>1795641778</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='cp3'/>
    <disk name='vdb' checkpoint='no'/>
    <disk name='sda' checkpoint='no'/>
  </disks>
  <domain type='qemu'>
    <name>xmltest-5410806b</name>
    <uuid>9ec68312-11cc-4583-970e-5457e0760c48</uuid>
    <memory unit='KiB'>65536</memory>
    <currentMemory unit='KiB'>65536</currentMemory>
    <vcpu placement='static'>1</vcpu>
    <resource>
      <partition>/machine</partition>
    </resource>
    <os>
      <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
      <boot dev='hd'/>
    </os>
    <cpu mode='custom' match='exact' check='none'>
      <model fallback='forbid'>qemu64</model>
    </cpu>
    <clock offset='utc'/>
    <on_poweroff>destroy</on_poweroff>
    <on_reboot>restart</on_reboot>
    <on_crash>destroy</on_crash>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/tmp/xmltest-5410806b.qcow2'/>
        <backingStore/>
        <target dev='vda' bus='virtio'/>
        <alias name='ua-vda'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='raw'/>
        <source file='/var/tmp/xmltest-5410806b-b.raw'/>
        <backingStore/>
        <target dev='vdb' bus='virtio'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
      </disk>
      <disk type='file' device='cdrom'>
        <driver name='qemu' type='raw'/>
        <target dev='sda' bus='sata'/>
        <readonly/>
        <address type='drive' controller='0' bus='0' target='0' unit='0'/>
      </disk>
      <controller type='sata' index='0'>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
      </controller>
      <controller type='usb' index='0' model='piix3-uhci'>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
      </controller>
      <controller type='pci' index='0' model='pci-root'/>
      <input type='mouse' bus='ps2'/>
      <input type='keyboard' bus='ps2'/>
      <audio id='1' type='none'/>
      <memballoon model='virtio'>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
      </memballoon>
    </devices>
  </domain>
</domaincheckpoint>
"""

# virsh dumpxml of the running domain.
DOMAIN = """\
<domain type='qemu' id='2'>
  <name>xmltest-5410806b</name>
  <uuid>9ec68312-11cc-4583-970e-5457e0760c48</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='lahf_lm'/>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/tmp/xmltest-5410806b.qcow2' index='3'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-vda'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/tmp/xmltest-5410806b-b.raw' index='2'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='sata0-0-0'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'>
      <alias name='pci.0'/>
    </controller>
    <controller type='sata' index='0'>
      <alias name='sata0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </controller>
    <input type='mouse' bus='ps2'>
      <alias name='input0'/>
    </input>
    <input type='keyboard' bus='ps2'>
      <alias name='input1'/>
    </input>
    <audio id='1' type='none'/>
    <memballoon model='virtio'>
      <alias name='balloon0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </memballoon>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+0:+0</label>
    <imagelabel>+0:+0</imagelabel>
  </seclabel>
</domain>
"""

# Disk kinds the test domain lacked, in the shape of libvirt's formatdomain docs.
DOMAIN_BLOCK_AND_NETWORK = """\
<domain type='qemu'>
  <name>other</name>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/data' index='2'/>
      <target dev='vdc' bus='virtio'/>
      <alias name='virtio-disk2'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image' index='1'>
        <host name='mon1.example.org' port='6789'/>
      </source>
      <target dev='vdd' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


# --- helpers -----------------------------------------------------------------------


def _schema(name: str) -> etree.RelaxNG:
    path = SCHEMAS / name
    if not path.exists():
        pytest.skip(f"libvirt's RelaxNG schema {path} is not installed")
    return etree.RelaxNG(etree.parse(str(path)))


@pytest.fixture(scope="module")
def backup_schema() -> etree.RelaxNG:
    return _schema("domainbackup.rng")


@pytest.fixture(scope="module")
def checkpoint_schema() -> etree.RelaxNG:
    return _schema("domaincheckpoint.rng")


def _assert_valid(schema: etree.RelaxNG, xml: str) -> None:
    document = etree.fromstring(xml.encode())
    assert schema.validate(document), f"{schema.error_log}\n{xml}"


def _values(xml: str, xpath: str) -> list[str]:
    """What `xpath` selects: attribute values and texts, or element names."""
    found = etree.fromstring(xml.encode()).xpath(xpath)
    assert isinstance(found, list)
    return [item.tag if isinstance(item, etree._Element) else str(item) for item in found]


def _file(
    name: str,
    path: str,
    *,
    driver: str | None = None,
    backupmode: DiskBackupMode | None = None,
) -> DiskBackupSpec:
    return DiskBackupSpec(name=name, target=path, driver=driver, backupmode=backupmode)


UNIX = NbdServerSpec(transport="unix", socket="/run/vmbackup/b1.sock")
TCP = NbdServerSpec(transport="tcp", name="192.0.2.10", port=10809)
TCP_TLS = NbdServerSpec(transport="tcp", name="backup.example.org", port=10810, tls=True)

# Every builder variant, with the values its XML must carry (XPath -> all matches).
BACKUP_CASES = [
    pytest.param(
        BackupSpec(mode="push", disks=(_file("vda", "/backups/u/b/vda.qcow2", driver="qcow2"),)),
        {
            "/domainbackup/@mode": ["push"],
            "/domainbackup/incremental": [],
            "/domainbackup/server": [],
            "//disk[@name='vda']/@backup": ["yes"],
            "//disk[@name='vda']/@type": ["file"],
            "//disk[@name='vda']/@backupmode": [],
            "//disk[@name='vda']/target/@file": ["/backups/u/b/vda.qcow2"],
            "//disk[@name='vda']/driver/@type": ["qcow2"],
        },
        id="push-full",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(_file("vda", "/backups/vda.raw", driver="raw"),)),
        {"//disk[@name='vda']/driver/@type": ["raw"], "//disk/target/@file": ["/backups/vda.raw"]},
        id="push-raw-driver",
    ),
    pytest.param(
        BackupSpec(
            mode="push",
            disks=(DiskBackupSpec(name="vda", type="block", target="/dev/vg0/vda-backup"),),
        ),
        {
            "//disk[@name='vda']/@type": ["block"],
            "//disk[@name='vda']/target/@dev": ["/dev/vg0/vda-backup"],
            "//disk[@name='vda']/target/@file": [],
            "//disk[@name='vda']/driver": [],
        },
        id="push-block-target",
    ),
    pytest.param(
        BackupSpec(
            mode="push",
            disks=(
                _file("vda", "/backups/vda.qcow2"),
                DiskBackupSpec(name="vdb", backup=False, target="/ignored"),
            ),
        ),
        {
            "//disk[@name='vdb']/@backup": ["no"],
            "//disk[@name='vdb']/@type": [],
            "//disk[@name='vdb']/*": [],
            "//disk[@name='vda']/@backup": ["yes"],
        },
        id="push-disk-excluded",
    ),
    pytest.param(
        BackupSpec(
            mode="push",
            incremental="cp-1",
            disks=(
                _file("vda", "/backups/vda.inc.qcow2", backupmode="incremental", driver="qcow2"),
                _file("vdb", "/backups/vdb.full.qcow2", backupmode="full"),
            ),
        ),
        {
            "/domainbackup/incremental/text()": ["cp-1"],
            "//disk[@name='vda']/@backupmode": ["incremental"],
            "//disk[@name='vdb']/@backupmode": ["full"],
        },
        id="push-incremental-per-disk",
    ),
    pytest.param(
        BackupSpec(
            mode="pull",
            server=UNIX,
            disks=(DiskBackupSpec(name="vda", scratch="/var/lib/vmbackup/scratch/b1.vda"),),
        ),
        {
            "/domainbackup/@mode": ["pull"],
            "/domainbackup/server/@transport": ["unix"],
            "/domainbackup/server/@socket": ["/run/vmbackup/b1.sock"],
            "/domainbackup/server/@tls": ["no"],
            "/domainbackup/server/@port": [],
            "//disk[@name='vda']/scratch/@file": ["/var/lib/vmbackup/scratch/b1.vda"],
            "//disk[@name='vda']/target": [],
            "//disk[@name='vda']/driver": [],
        },
        id="pull-unix",
    ),
    pytest.param(
        BackupSpec(
            mode="pull",
            server=TCP,
            incremental="cp1",
            disks=(
                DiskBackupSpec(name="vda", backupmode="incremental", scratch="/scratch/vda"),
                DiskBackupSpec(name="vdb", backup=False),
            ),
        ),
        {
            "/domainbackup/server/@transport": ["tcp"],
            "/domainbackup/server/@name": ["192.0.2.10"],
            "/domainbackup/server/@port": ["10809"],
            "/domainbackup/server/@tls": ["no"],
            "/domainbackup/server/@socket": [],
            "//disk[@name='vda']/@backupmode": ["incremental"],
        },
        id="pull-tcp",
    ),
    pytest.param(
        BackupSpec(
            mode="pull",
            server=TCP_TLS,
            disks=(DiskBackupSpec(name="vda", scratch="/scratch/vda"),),
        ),
        {
            "/domainbackup/server/@name": ["backup.example.org"],
            "/domainbackup/server/@port": ["10810"],
            "/domainbackup/server/@tls": ["yes"],
        },
        id="pull-tcp-tls",
    ),
    pytest.param(
        BackupSpec(
            mode="pull",
            server=UNIX,
            disks=(DiskBackupSpec(name="vda", type="block", scratch="/dev/vg0/scratch"),),
        ),
        {"//disk[@name='vda']/@type": ["block"], "//disk/scratch/@dev": ["/dev/vg0/scratch"]},
        id="pull-block-scratch",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=()),
        {"/domainbackup/@mode": ["push"], "/domainbackup/*": []},
        id="push-every-disk",
    ),
]

CHECKPOINT_CASES = [
    pytest.param(
        CheckpointSpec(
            name="vmb-20240101T000000",
            description="nightly & <full>",
            disks=(CheckpointDiskSpec(name="vda"),),
        ),
        {
            "/domaincheckpoint/name/text()": ["vmb-20240101T000000"],
            "/domaincheckpoint/description/text()": ["nightly & <full>"],
            "//disk[@name='vda']/@checkpoint": ["bitmap"],
        },
        id="with-description",
    ),
    pytest.param(
        CheckpointSpec(name="cp1", disks=(CheckpointDiskSpec(name="vda"),)),
        {"/domaincheckpoint/name/text()": ["cp1"], "/domaincheckpoint/description": []},
        id="without-description",
    ),
    pytest.param(
        CheckpointSpec(
            name="cp2",
            disks=(CheckpointDiskSpec(name="vda"), CheckpointDiskSpec(name="vdb", checkpoint="no")),
        ),
        {
            "//disk[@name='vda']/@checkpoint": ["bitmap"],
            "//disk[@name='vdb']/@checkpoint": ["no"],
        },
        id="disk-checkpoint-no",
    ),
    pytest.param(
        CheckpointSpec(name="cp3", disks=()),
        {"/domaincheckpoint/*": ["name"], "/domaincheckpoint/name/text()": ["cp3"]},
        id="every-disk",
    ),
]


# --- building ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), BACKUP_CASES)
def test_backup_xml_is_valid_for_libvirt(
    spec: BackupSpec, expected: dict[str, list[str]], backup_schema: etree.RelaxNG
) -> None:
    _assert_valid(backup_schema, build_backup_xml(spec))


@pytest.mark.parametrize(("spec", "expected"), BACKUP_CASES)
def test_backup_xml_carries_the_spec(spec: BackupSpec, expected: dict[str, list[str]]) -> None:
    xml = build_backup_xml(spec)
    for xpath, values in expected.items():
        assert _values(xml, xpath) == values, xpath


@pytest.mark.parametrize(("spec", "expected"), CHECKPOINT_CASES)
def test_checkpoint_xml_is_valid_for_libvirt(
    spec: CheckpointSpec, expected: dict[str, list[str]], checkpoint_schema: etree.RelaxNG
) -> None:
    _assert_valid(checkpoint_schema, build_checkpoint_xml(spec))


@pytest.mark.parametrize(("spec", "expected"), CHECKPOINT_CASES)
def test_checkpoint_xml_carries_the_spec(
    spec: CheckpointSpec, expected: dict[str, list[str]]
) -> None:
    xml = build_checkpoint_xml(spec)
    for xpath, values in expected.items():
        assert _values(xml, xpath) == values, xpath


def test_backup_xml_keeps_markup_in_values_as_text() -> None:
    spec = BackupSpec(mode="push", disks=(_file("vda", "/backups/a'b\"<c>&d.qcow2"),))
    xml = build_backup_xml(spec)
    assert _values(xml, "//target/@file") == ["/backups/a'b\"<c>&d.qcow2"]
    assert parse_backup_xml(xml).disks[0].target == "/backups/a'b\"<c>&d.qcow2"


def test_checkpoint_names_the_disks_in_order() -> None:
    spec = CheckpointSpec(
        name="cp", disks=(CheckpointDiskSpec(name="vdb"), CheckpointDiskSpec(name="vda"))
    )
    assert _values(build_checkpoint_xml(spec), "//disk/@name") == ["vdb", "vda"]


@pytest.mark.parametrize(
    "name", ["cp1", "1525889631", "a.b_c-d", "A" * 64, "vmb-2024-01-01T00.00.00"]
)
def test_name_pattern_accepts_safe_names(name: str) -> None:
    assert NAME_PATTERN.fullmatch(name)
    assert "<name>" + name + "</name>" in build_checkpoint_xml(CheckpointSpec(name, ()))


BAD_NAMES = ["", ".hidden", "-x", "_x", "a/b", "../x", "a b", "x\n", "é", "A" * 65, "a:b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_checkpoint_refuses_a_name_outside_the_allow_list(name: str) -> None:
    assert not NAME_PATTERN.fullmatch(name)
    with pytest.raises(InvalidRequest, match="not an allowed name"):
        build_checkpoint_xml(CheckpointSpec(name=name, disks=()))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_backup_refuses_a_base_checkpoint_outside_the_allow_list(name: str) -> None:
    spec = BackupSpec(mode="push", incremental=name, disks=(_file("vda", "/b/vda"),))
    with pytest.raises(InvalidRequest, match="incremental"):
        build_backup_xml(spec)


PUSH_VDA = _file("vda", "/backups/vda.qcow2")
PULL_VDA = DiskBackupSpec(name="vda", scratch="/scratch/vda")

INVALID_BACKUPS = [
    pytest.param(
        BackupSpec(mode="push", disks=(_file("vda", "backups/vda.qcow2"),)),
        "must be an absolute path",
        id="relative-target",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(_file("vda", "/backups/a\nb"),)),
        "must be an absolute path",
        id="control-char-in-path",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(DiskBackupSpec(name="vda"),)),
        "target is required",
        id="push-without-target",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=UNIX, disks=(DiskBackupSpec(name="vda"),)),
        "scratch is required",
        id="pull-without-scratch",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=UNIX, disks=(replace(PULL_VDA, scratch="scratch/vda"),)),
        "must be an absolute path",
        id="relative-scratch",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(replace(PUSH_VDA, scratch="/scratch/vda"),)),
        "scratch is for pull",
        id="scratch-in-push",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=UNIX, disks=(replace(PULL_VDA, target="/b/vda"),)),
        "are for push",
        id="target-in-pull",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=UNIX, disks=(replace(PULL_VDA, driver="qcow2"),)),
        "are for push",
        id="driver-in-pull",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(replace(PUSH_VDA, driver="vmdk"),)),
        "unsupported target format",
        id="unknown-driver",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(replace(PUSH_VDA, name="vda/../x"),)),
        "not an allowed name",
        id="bad-disk-name",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(PUSH_VDA, replace(PUSH_VDA, target="/b/2"))),
        "listed twice",
        id="duplicate-disk",
    ),
    pytest.param(
        BackupSpec(mode="push", disks=(replace(PUSH_VDA, backupmode="incremental"),)),
        "needs a base checkpoint",
        id="incremental-disk-without-base",
    ),
    pytest.param(
        BackupSpec(mode="push", server=UNIX, disks=(PUSH_VDA,)),
        "push backup has no NBD server",
        id="server-in-push",
    ),
    pytest.param(
        BackupSpec(mode="pull", disks=(PULL_VDA,)),
        "needs an NBD server",
        id="pull-without-server",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=NbdServerSpec("unix"), disks=(PULL_VDA,)),
        "server socket is required",
        id="unix-without-socket",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=NbdServerSpec("unix", socket="x.sock"), disks=(PULL_VDA,)),
        "must be an absolute path",
        id="relative-socket",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(UNIX, port=10809), disks=(PULL_VDA,)),
        "not a name or port",
        id="unix-with-port",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(TCP, port=None), disks=(PULL_VDA,)),
        "needs a port",
        id="tcp-without-port",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(TCP, port=65536), disks=(PULL_VDA,)),
        "needs a port",
        id="tcp-port-out-of-range",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(TCP, name=None), disks=(PULL_VDA,)),
        "needs a name",
        id="tcp-without-name",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(TCP, name="a b"), disks=(PULL_VDA,)),
        "not a host name or address",
        id="tcp-bad-name",
    ),
    pytest.param(
        BackupSpec(mode="pull", server=replace(TCP, socket="/s.sock"), disks=(PULL_VDA,)),
        "not a socket",
        id="tcp-with-socket",
    ),
]


@pytest.mark.parametrize(("spec", "message"), INVALID_BACKUPS)
def test_backup_refuses_what_libvirt_would_refuse(spec: BackupSpec, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_backup_xml(spec)


def test_tcp_server_accepts_an_ipv6_address(backup_schema: etree.RelaxNG) -> None:
    server = replace(TCP, name="2001:db8::10")
    xml = build_backup_xml(BackupSpec(mode="pull", server=server, disks=(PULL_VDA,)))
    _assert_valid(backup_schema, xml)
    assert _values(xml, "/domainbackup/server/@name") == ["2001:db8::10"]


def test_checkpoint_refuses_a_description_xml_cannot_carry() -> None:
    with pytest.raises(InvalidRequest, match="description"):
        build_checkpoint_xml(CheckpointSpec(name="cp", disks=(), description="bell \x07"))


def test_checkpoint_refuses_a_disk_listed_twice() -> None:
    disks = (CheckpointDiskSpec(name="vda"), CheckpointDiskSpec(name="vda", checkpoint="no"))
    with pytest.raises(InvalidRequest, match="listed twice"):
        build_checkpoint_xml(CheckpointSpec(name="cp", disks=disks))


# --- reading backups ----------------------------------------------------------------


def test_parse_push_incremental_reads_libvirts_values() -> None:
    state = parse_backup_xml(PUSH_INCREMENTAL)
    assert state.mode == "push"
    assert state.incremental == "cp3"
    assert state.server is None
    vda, vdb, sda = state.disks
    assert vda.name == "vda"
    assert vda.backup is True
    assert vda.backupmode == "incremental"
    assert vda.type == "file"
    assert vda.format == "qcow2"
    assert vda.target == "/var/tmp/xmltest-5410806b.vda.inc.qcow2"
    assert vda.scratch is None
    assert vda.export_name is None
    assert vda.export_bitmap is None
    assert (vdb.name, vdb.backup, vdb.type, vdb.target) == ("vdb", False, None, None)
    # libvirt lists every disk of the domain, asked for or not.
    assert (sda.name, sda.backup) == ("sda", False)


def test_parse_push_reads_the_names_libvirt_generated() -> None:
    state = parse_backup_xml(PUSH_GENERATED)
    assert [(d.name, d.backupmode, d.format, d.target) for d in state.disks] == [
        ("vda", "full", "qcow2", "/var/tmp/xmltest-5410806b.qcow2.1795641799"),
        # The source is raw; libvirt's default target format is qcow2 all the same.
        ("vdb", "full", "qcow2", "/var/tmp/xmltest-5410806b-b.raw.1795641799"),
        ("sda", None, None, None),
    ]


def test_parse_pull_reads_the_export_and_bitmap() -> None:
    state = parse_backup_xml(PULL_UNIX_INCREMENTAL)
    assert state.mode == "pull"
    assert state.incremental == "cp1"
    assert state.server == NbdServerSpec(
        transport="unix", socket="/var/tmp/xmltest-5410806b.sock", tls=False
    )
    vda = state.disks[0]
    assert vda.export_name == "vda"
    assert vda.export_bitmap == "backup-vda"
    assert vda.scratch == "/var/tmp/xmltest-5410806b.vda.scratch"
    assert vda.target is None
    assert vda.format == "qcow2"
    assert vda.backupmode == "incremental"


def test_parse_pull_full_has_exports_but_no_bitmap() -> None:
    state = parse_backup_xml(PULL_TCP_FULL)
    assert state.incremental is None
    assert state.server == NbdServerSpec(transport="tcp", name="127.0.0.1", port=10899, tls=False)
    assert [(d.name, d.export_name, d.export_bitmap, d.scratch) for d in state.disks] == [
        ("vda", "vda", None, "/var/tmp/xmltest-5410806b.vda.scratch"),
        ("vdb", "vdb", None, "/var/tmp/xmltest-5410806b.vdb.scratch"),
        ("sda", None, None, None),
    ]


@pytest.mark.parametrize(
    ("server", "tls"), [(PULL_TCP_TLS_NO_SERVER, False), (PULL_TCP_TLS_YES_SERVER, True)]
)
def test_parse_pull_reads_tls(server: str, tls: bool) -> None:
    xml = PULL_TCP_FULL.replace(
        "<server transport='tcp' name='127.0.0.1' port='10899'/>", server, 1
    )
    assert server in xml
    state = parse_backup_xml(xml)
    assert state.server == NbdServerSpec(transport="tcp", name="127.0.0.1", port=10899, tls=tls)


def test_parse_backup_defaults_as_libvirt_does() -> None:
    xml = (
        "<domainbackup><disks><disk name='vda' type='block'>"
        "<target dev='/dev/vg0/backup'/></disk></disks></domainbackup>"
    )
    state = parse_backup_xml(xml)
    assert state.mode == "push"
    vda = state.disks[0]
    assert (vda.backup, vda.type, vda.target, vda.format) == (
        True,
        "block",
        "/dev/vg0/backup",
        None,
    )


@pytest.mark.parametrize(("spec", "expected"), BACKUP_CASES)
def test_backup_round_trip_keeps_the_values(
    spec: BackupSpec, expected: dict[str, list[str]]
) -> None:
    state = parse_backup_xml(build_backup_xml(spec))
    assert state.mode == spec.mode
    assert state.incremental == spec.incremental
    assert state.server == spec.server
    assert [disk.name for disk in state.disks] == [disk.name for disk in spec.disks]
    for asked, got in zip(spec.disks, state.disks, strict=True):
        assert got.backup == asked.backup
        if not asked.backup:
            assert (got.type, got.target, got.scratch) == (None, None, None)
            continue
        assert got.backupmode == asked.backupmode
        assert got.type == asked.type
        assert got.format == asked.driver
        assert got.target == asked.target
        assert got.scratch == asked.scratch


# --- reading checkpoints ------------------------------------------------------------


def test_parse_checkpoint_with_sizes() -> None:
    info = parse_checkpoint_xml(CHECKPOINT_SIZED)
    assert info.name == "cp5"
    assert info.parent == "cp4"
    assert info.description == "standalone & <special>"
    assert info.created_at == datetime(2026, 11, 25, 21, 23, 34, tzinfo=UTC)
    assert info.created_at.utcoffset() is not None
    vda, vdb, sda = info.disks
    assert (vda.name, vda.checkpoint, vda.bitmap, vda.size_bytes) == (
        "vda",
        "bitmap",
        "cp5",
        3 << 20,
    )
    assert (vdb.name, vdb.checkpoint, vdb.bitmap, vdb.size_bytes) == ("vdb", "no", None, None)
    assert (sda.name, sda.checkpoint) == ("sda", "no")
    assert info.xml == CHECKPOINT_SIZED


def test_parse_first_checkpoint_has_no_parent_and_no_size() -> None:
    info = parse_checkpoint_xml(CHECKPOINT_ROOT)
    assert info.parent is None
    assert info.created_at == datetime(2026, 11, 25, 21, 22, 32, tzinfo=UTC)
    assert [(d.name, d.bitmap, d.size_bytes) for d in info.disks] == [
        ("vda", "cp1", None),
        ("vdb", None, None),
        ("sda", None, None),
    ]


def test_parse_checkpoint_ignores_the_embedded_domain() -> None:
    info = parse_checkpoint_xml(CHECKPOINT_WITH_DOMAIN)
    assert info.name == "cp3"  # not the domain's <name>
    assert info.parent == "cp2"
    assert info.description == "pull full"
    assert info.created_at == datetime(2026, 11, 25, 21, 22, 58, tzinfo=UTC)
    # The domain's own three <devices><disk> are not checkpoint disks.
    assert [(d.name, d.checkpoint) for d in info.disks] == [
        ("vda", "bitmap"),
        ("vdb", "no"),
        ("sda", "no"),
    ]
    assert info.xml == CHECKPOINT_WITH_DOMAIN  # kept whole, for redefinition


def test_captured_checkpoints_are_valid_for_libvirt(checkpoint_schema: etree.RelaxNG) -> None:
    for xml in (CHECKPOINT_SIZED, CHECKPOINT_ROOT, CHECKPOINT_WITH_DOMAIN):
        _assert_valid(checkpoint_schema, xml)


def test_parse_checkpoint_defaults_disk_checkpoint_to_bitmap() -> None:
    xml = (
        "<domaincheckpoint><name>c</name><creationTime>0</creationTime>"
        "<disks><disk name='vda'/></disks></domaincheckpoint>"
    )
    info = parse_checkpoint_xml(xml)
    assert info.disks[0].checkpoint == "bitmap"
    assert info.created_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert info.description is None


# --- reading domains ----------------------------------------------------------------


def test_parse_domain_disks_of_a_running_domain() -> None:
    assert parse_domain_disks(DOMAIN) == [
        DiskXml(
            name="vda",
            device="disk",
            type="file",
            format="qcow2",
            source="/var/tmp/xmltest-5410806b.qcow2",
            alias="ua-vda",
        ),
        DiskXml(
            name="vdb",
            device="disk",
            type="file",
            format="raw",
            source="/var/tmp/xmltest-5410806b-b.raw",
            alias="virtio-disk1",
        ),
        # An empty cdrom: no <source>, and <driver> without a type.
        DiskXml(
            name="sda", device="cdrom", type="file", format=None, source=None, alias="sata0-0-0"
        ),
    ]


def test_parse_domain_disks_of_block_and_network_disks() -> None:
    assert parse_domain_disks(DOMAIN_BLOCK_AND_NETWORK) == [
        DiskXml("vdc", "disk", "block", "raw", "/dev/vg0/data", "virtio-disk2"),
        DiskXml("vdd", "disk", "network", "raw", "rbd:pool/image", None),
    ]


def test_parse_domain_disks_of_a_domain_without_disks() -> None:
    assert parse_domain_disks("<domain type='qemu'><name>d</name><devices/></domain>") == []


# --- unreadable documents ------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "xml", "message"),
    [
        (parse_backup_xml, "<domainbackup", "unreadable"),
        (parse_backup_xml, "<domaincheckpoint/>", "expected <domainbackup>"),
        (parse_backup_xml, "<domainbackup mode='sideways'/>", "unknown backup mode"),
        (parse_backup_xml, "<domainbackup><disks><disk/></disks></domainbackup>", "no name"),
        (
            parse_backup_xml,
            "<domainbackup mode='pull'><server transport='rdma' name='h'/></domainbackup>",
            "transport",
        ),
        (
            parse_backup_xml,
            "<domainbackup mode='pull'><server name='h' port='x'/></domainbackup>",
            "not a number",
        ),
        (parse_checkpoint_xml, "<domaincheckpoint/>", "no <name>"),
        (
            parse_checkpoint_xml,
            "<domaincheckpoint><name>c</name></domaincheckpoint>",
            "no <creationTime>",
        ),
        (
            parse_checkpoint_xml,
            "<domaincheckpoint><name>c</name><creationTime>99999999999999999999"
            "</creationTime></domaincheckpoint>",
            "out of range",
        ),
        (parse_domain_disks, "<domain><devices><disk/></devices></domain>", "no <target dev>"),
    ],
)
def test_unreadable_libvirt_xml_is_a_hypervisor_error(
    parse: Callable[[str], object], xml: str, message: str
) -> None:
    with pytest.raises(HypervisorError, match=message):
        parse(xml)


def test_built_checkpoint_is_not_a_checkpoint_description() -> None:
    # Only libvirt sets creationTime: our own document is input, not a reading.
    xml = build_checkpoint_xml(CheckpointSpec(name="cp", disks=()))
    with pytest.raises(HypervisorError, match="creationTime"):
        parse_checkpoint_xml(xml)


def test_parse_refuses_entities_and_doctypes() -> None:
    xml = (
        '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<domainbackup><incremental>&x;</incremental></domainbackup>"
    )
    with pytest.raises(HypervisorError, match="DOCTYPE"):
        parse_backup_xml(xml)


def test_parse_accepts_an_xml_declaration() -> None:
    xml = "<?xml version='1.0' encoding='UTF-8'?>\n" + CHECKPOINT_ROOT
    assert parse_checkpoint_xml(xml).name == "cp1"
