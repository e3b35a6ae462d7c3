#!/usr/bin/env bash
# Build the vmbackup image without a Docker engine, with Debian's buildah (as root):
#
#   deploy/dev/build-image.sh            # the base (once, then cached) and the image
#   deploy/dev/build-image.sh --base     # only the base; prints its name
#
# The official python:3.11-slim-bookworm image cannot be pulled everywhere (not here),
# so the base is made locally: `debootstrap bookworm` plus python3, python3-dev,
# python3-venv and python-is-python3, imported with buildah, and handed to the
# Dockerfile as PYTHON_IMAGE. The base is named by a hash of its recipe (the debootstrap
# arguments and RECIPE_VERSION), so a rerun reuses it and a changed recipe makes a new one.
#
# Builds run with `--isolation chroot` (no runc, no namespaces needed) and see the
# host's CA certificates and pip configuration read-only, so apt and pip inside the
# build reach the package registries the way the host does.
#
# Environment: VMBACKUP_IMAGE (the tag, default localhost/vmbackup:local),
# DEBIAN_MIRROR (default: the host's own Debian mirror from its apt sources).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${VMBACKUP_IMAGE:-localhost/vmbackup:local}
SUITE=bookworm
# ca-certificates in the base as in the official image: the build mounts the host's
# /etc/ssl/certs read-only, where the package's own set-up could not write.
BASE_PACKAGES=python3,python3-dev,python3-venv,python-is-python3,ca-certificates

log() { printf 'build-image: %s\n' "$*" >&2; }

base_only=0
case "${1:-}" in
  "") ;;
  --base) base_only=1 ;;
  *) echo "usage: $0 [--base]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "build-image: must run as root (debootstrap and buildah's chroot isolation)" >&2
  exit 1
fi
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || {
    echo "build-image: $tool is missing: deploy/dev/setup-host.sh --tcp installs it" >&2
    exit 1
  }
done

# One build at a time on this machine: two test runs at once would otherwise both make
# the base, and a tag could move under the other's feet.
exec 9>/var/tmp/vmbackup-build-image.lock
flock 9

# The Debian mirror the host's apt already uses for $SUITE main (deb822 .sources or
# one-line .list), so that the base is fetched the same way as the host's packages.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (uri != "" && ok) print uri }' "$f" | head -n 1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /\[/ && $3 == suite { print $2; exit }' "$f"
  done
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror | head -n 1)}

# Name the base by its recipe (bump RECIPE_VERSION when build_base changes otherwise);
# the mirror is left out: any mirror gives the same packages.
RECIPE_VERSION=3
DEBOOTSTRAP_ARGS=(--variant=minbase "--include=$BASE_PACKAGES" "$SUITE")
recipe_hash=$(printf '%s ' "$RECIPE_VERSION" "${DEBOOTSTRAP_ARGS[@]}" | sha256sum | cut -c1-12)
BASE="localhost/vmbackup-base:$SUITE-$recipe_hash"

build_base() {
  local work
  work=$(mktemp -d /var/tmp/vmbackup-base.XXXXXX)
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  log "making $BASE with debootstrap ${MIRROR:-(its default mirror)}"
  debootstrap "${DEBOOTSTRAP_ARGS[@]}" "$work/root" ${MIRROR:+"$MIRROR"} \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  # Leave no package lists or caches in the image, as the official images do, and not
  # this machine's name or name servers (debootstrap copies them in; a container gets
  # its own).
  rm -rf "$work"/root/var/lib/apt/lists/* "$work"/root/var/cache/apt/*.bin \
    "$work"/root/var/cache/apt/archives/*.deb "$work"/root/etc/resolv.conf \
    "$work"/root/etc/hostname
  # debootstrap leaves only "$SUITE main" in sources.list; the official image also has
  # $SUITE-updates and $SUITE-security. Take the host's Debian sources (deb822 files
  # signed by Debian's archive key) where they name this suite, so the image gets the
  # same updates the host does, from the same mirror.
  local f copied=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    grep -q "^Suites:.*\b$SUITE\b" "$f" && grep -q "^Signed-By:.*debian-archive-keyring" "$f" || continue
    cp "$f" "$work/root/etc/apt/sources.list.d/"
    copied=1
  done
  if [ "$copied" -eq 1 ]; then rm -f "$work/root/etc/apt/sources.list"; fi
  tar -C "$work/root" -cf "$work/root.tar" .
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$work/root.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  log "reusing $BASE"
else
  build_base
fi
if [ "$base_only" -eq 1 ]; then
  echo "$BASE"
  exit 0
fi

# Read-only views of the host's trust and pip settings, where the host has them.
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
for path in /etc/pip.conf /etc/xdg/pip; do
  [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
done

log "building $IMAGE from $BASE"
# --layers: a rerun with unchanged inputs reuses every step. Docker's format keeps the
# HEALTHCHECK (OCI's image format has no place for it).
buildah bud --isolation chroot --layers --format docker --quiet \
  --build-arg "PYTHON_IMAGE=$BASE" "${mounts[@]}" \
  -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
echo "$IMAGE"
