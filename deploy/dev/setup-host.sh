#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to run vmbackup and its test suite:
# Debian packages, a libvirtd without systemd (the way DESIGN.md describes),
# and, with --postgres, a PostgreSQL answering on 127.0.0.1:5432.
# Idempotent: every step checks first and does only what is missing.
set -euo pipefail

want_postgres=0
want_tcp=0
for arg in "$@"; do
  case "$arg" in
    --postgres) want_postgres=1 ;;
    --tcp) want_tcp=1 ;;  # tests only: libvirtd on loopback TCP with no auth
    *) echo "usage: $0 [--postgres] [--tcp]" >&2; exit 2 ;;
  esac
done

log() { printf 'setup-host: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

packages=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin
  python3-venv python3-dev gcc
)
[ "$want_postgres" -eq 1 ] && packages+=(postgresql)
# Tests only: a headless browser for the status page, Prometheus (and promtool) for the
# alerts, buildah and debootstrap to build and start the image (deploy/dev/build-image.sh).
[ "$want_tcp" -eq 1 ] && packages+=(chromium prometheus buildah debootstrap)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# libvirt's QEMU driver wants these to exist even when it runs guests as root.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

qemu_conf=/etc/libvirt/qemu.conf
if ! grep -q '^# vmbackup dev host' "$qemu_conf" 2>/dev/null; then
  log "writing $qemu_conf (guests as root, no cgroups, no security driver)"
  cat > "$qemu_conf" <<'CONF'
# vmbackup dev host: containers without systemd, guests run as root.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
CONF
  pkill -x libvirtd 2>/dev/null && sleep 1 || true
fi

libvirtd_conf=/etc/libvirt/libvirtd.conf
libvirtd_args=(-d)
if [ "$want_tcp" -eq 1 ]; then
  if ! grep -q '^# vmbackup test host' "$libvirtd_conf" 2>/dev/null; then
    log "letting libvirtd listen on 127.0.0.1:16509 without auth (tests only)"
    cat >> "$libvirtd_conf" <<'CONF'
# vmbackup test host: loopback TCP, no auth. Never on a real host.
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
auth_tcp = "none"
CONF
    pkill -x libvirtd 2>/dev/null && sleep 1 || true
  fi
  libvirtd_args+=(--listen)
fi

mkdir -p /var/log/libvirt /var/lib/libvirt /run/libvirt
pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd ${libvirtd_args[*]}"
  libvirtd "${libvirtd_args[@]}"
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { echo "setup-host: libvirtd does not answer" >&2; exit 1; }

if [ "$want_postgres" -eq 1 ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    cluster=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$cluster" ] || [ ! -d "/etc/postgresql/$cluster/main" ]; then
      log "creating PostgreSQL cluster"
      pg_createcluster "${cluster:-15}" main
      cluster=$(ls /etc/postgresql | sort -V | tail -n 1)
    fi
    hba="/etc/postgresql/$cluster/main/pg_hba.conf"
    if ! grep -q '^# vmbackup test' "$hba"; then
      log "trusting loopback connections in $hba (tests only)"
      sed -i '1i # vmbackup test: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    log "starting PostgreSQL $cluster"
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
  fi
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432
fi
log "ready"
