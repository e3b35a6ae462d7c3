#!/usr/bin/env bash
# A throw-away domain to try vmbackup on: `demo`, TCG, no guest OS, two qcow2 disks
# (vda 256 MiB, vdb 64 MiB) under /var/lib/vmbackup/demo, with data written onto both
# through QEMU so a backup has something to copy.
#   demo-vm.sh [create]   define and start it (idempotent: a running demo is left alone)
#   demo-vm.sh clean      destroy and undefine it (checkpoint metadata too), remove its files
# Needs the host set up by setup-host.sh. Dev and demo only: it uses the QEMU monitor.
set -euo pipefail

uri=qemu:///system
name=demo
dir=/var/lib/vmbackup/demo
log=/var/log/libvirt/qemu/$name.log
marker="vmbackup demo VM (deploy/dev/demo-vm.sh)"
MiB=$((1024 * 1024))
declare -A disk_size=([vda]=$((256 * MiB)) [vdb]=$((64 * MiB)))

virsh() { command virsh -q -c "$uri" "$@"; }
say() { printf 'demo-vm: %s\n' "$*"; }
die() { printf 'demo-vm: %s\n' "$*" >&2; exit 1; }

exists() { virsh dominfo "$name" >/dev/null 2>&1; }
state() { virsh domstate "$name" 2>/dev/null | head -n 1; }
active() { virsh list --name | grep -qx "$name"; }
# Never touch a `demo` that this script did not make.
ours() { [ "$(virsh desc "$name" 2>/dev/null)" = "$marker" ]; }

domain_xml() {
  local dev
  cat <<XML
<domain type='qemu'>
  <name>$name</name>
  <description>$marker</description>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
XML
  for dev in vda vdb; do
    cat <<XML
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/$dev.qcow2'/>
      <target dev='$dev' bus='virtio'/>
      <alias name='ua-$dev'/>
    </disk>
XML
  done
  cat <<XML
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}

# qemu-io through HMP. QEMU 7.2 prints the result on its stdout (the domain's log), not on
# the monitor, so success is the "wrote N/N bytes at offset O" line appearing in the log.
write_pattern() {  # disk offset length byte
  local disk=$1 offset=$2 length=$3 byte=$4 start reply
  start=$(stat -c %s "$log" 2>/dev/null || echo 0)
  reply=$(virsh qemu-monitor-command "$name" --hmp \
    "qemu-io -d /machine/peripheral/ua-$disk/virtio-backend \"write -P $byte $offset $length\"")
  [ -z "${reply//[[:space:]]/}" ] || die "qemu-io on $disk: $reply"
  for _ in $(seq 1 100); do
    tail -c +$((start + 1)) "$log" | grep -q "wrote $length/$length bytes at offset $offset" && return 0
    sleep 0.05
  done
  die "qemu-io on $disk wrote nothing; see $log: $(tail -c +$((start + 1)) "$log" | tail -n 3)"
}

write_data() {
  write_pattern vda 0 $((4 * MiB)) 0xa1
  write_pattern vda $((100 * MiB)) $((8 * MiB)) 0xa2
  write_pattern vda $((255 * MiB)) $((1 * MiB)) 0xa3
  write_pattern vdb $((1 * MiB)) $((2 * MiB)) 0xb1
  write_pattern vdb $((60 * MiB)) $((4 * MiB)) 0xb2
  say "wrote 13 MiB onto vda and 6 MiB onto vdb through QEMU"
}

create() {
  if exists; then
    ours || die "a domain named $name exists that this script did not make; leaving it alone"
    case "$(state)" in
      running) say "$name exists and runs already; nothing to do"; return 0 ;;
      paused) virsh resume "$name" >/dev/null; say "$name was paused; resumed it"; return 0 ;;
    esac
  fi
  mkdir -p "$dir"
  local dev
  for dev in vda vdb; do
    [ -f "$dir/$dev.qcow2" ] || qemu-img create -q -f qcow2 "$dir/$dev.qcow2" "${disk_size[$dev]}"
  done
  if ! exists; then
    local xml
    xml=$(mktemp)
    domain_xml >"$xml"
    virsh define "$xml" >/dev/null || { rm -f "$xml"; die "virsh define failed"; }
    rm -f "$xml"
  fi
  virsh start "$name" >/dev/null
  say "started $name (disks in $dir)"
  write_data
  virsh domblklist "$name" --details
}

clean() {
  if exists; then
    ours || die "a domain named $name exists that this script did not make; leaving it alone"
    ! active || virsh destroy "$name" >/dev/null
    local checkpoint
    for checkpoint in $(virsh checkpoint-list "$name" --name --topological | tac); do
      virsh checkpoint-delete "$name" "$checkpoint" --metadata >/dev/null
    done
    virsh undefine "$name" --checkpoints-metadata --snapshots-metadata --managed-save >/dev/null
    say "destroyed and undefined $name"
  else
    say "no domain named $name"
  fi
  rm -rf "$dir"
  rm -f "$log"
  rmdir --ignore-fail-on-non-empty "$(dirname "$dir")" 2>/dev/null || true
  say "removed $dir"
}

[ "$(id -u)" -eq 0 ] || die "run as root (it writes under /var/lib and uses qemu:///system)"
case "${1:-create}" in
  create) create ;;
  clean) clean ;;
  *) echo "usage: $0 [create|clean]" >&2; exit 2 ;;
esac
