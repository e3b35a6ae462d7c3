# syntax=docker/dockerfile:1
#
# vmbackup container image.
#
#   docker build -t vmbackup .
#   docker run --rm -p 8080:8080 -e VMBACKUP_TOKENS='[...]' ... vmbackup
#
# Without a Docker engine, or where python:3.11-slim-bookworm cannot be pulled,
# deploy/dev/build-image.sh builds it with buildah on a local Debian bookworm base
# (debootstrap plus python3, python3-dev, python3-venv, python-is-python3), passed as
# PYTHON_IMAGE: every step below works on either base (`python` is python3.11 in both,
# with its headers for the build and ca-certificates already there).
# tests/integration/test_image.py builds it that way and starts it.
#
# Two stages: the builder compiles libvirt-python against libvirt's C library
# (libvirt-dev, pkg-config, gcc) into a venv; the runtime stage gets only that venv
# and the shared libraries and tools the service calls at run time.
#
# The image listens on 0.0.0.0:8080, so the service refuses to start (and so does
# `vmbackup migrate`, which reads the same settings) unless VMBACKUP_TOKENS is set:
# a JSON list of {"name", "sha256", "scopes"}. See docker-compose.yml for the rest
# (libvirt socket or remote URI, backup roots at identical paths on host and container,
# and VMBACKUP_TLS_CERT/VMBACKUP_TLS_KEY: without them tokens cross the network in clear).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VENV=/opt/vmbackup/.venv

# ---------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ARG VENV

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The venv lives at the same path in both stages: its scripts' shebangs are absolute.
RUN python -m venv "${VENV}"
ENV PATH="${VENV}/bin:${PATH}"

WORKDIR /src

# Dependencies first, read from pyproject.toml, so that a change to the code alone
# does not rebuild libvirt-python.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself (hatchling; migrations/ are force-included into the wheel).
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-deps . \
 && vmbackup --help > /dev/null

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG VENV

# libvirt0: the libvirt client library libvirt-python links against.
# qemu-utils: qemu-img (rebase of push chains, restores).
# Optional (EXTRA_PACKAGES): libnbd-bin (nbdinfo, nbdcopy: to read pull-mode exports
# from inside the container) and openssh-client (for qemu+ssh:// libvirt URIs).
# tini: PID 1 that forwards signals and reaps the children (qemu-img, ssh).
# ca-certificates comes with the base (both bases have it) and is not named here: naming
# it would upgrade it when the mirror has a newer one, and its set-up rewrites
# /etc/ssl/certs, which a build may mount read-only from the host
# (deploy/dev/build-image.sh does). The check below fails the build without it.
ARG EXTRA_PACKAGES="libnbd-bin openssh-client"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libvirt0 qemu-utils tini ${EXTRA_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*

# A non-root user by default. Talking to the host's qemu:///system through the mounted
# socket /var/run/libvirt/libvirt-sock needs that socket's permissions (root, or the
# host's `libvirt` group), and the backup files libvirt writes belong to QEMU's user:
# docker-compose.yml shows running that service as root; with a remote URI
# (qemu+tls://host/system, qemu+ssh://user@host/system) this user is enough.
RUN groupadd --system --gid 10001 vmbackup \
 && useradd --system --uid 10001 --gid vmbackup --create-home --home-dir /home/vmbackup \
      --shell /usr/sbin/nologin vmbackup \
 && install -d -o vmbackup -g vmbackup -m 0750 /var/lib/vmbackup /run/vmbackup

COPY --from=builder ${VENV} ${VENV}
# Fails the build if a shared library, qemu-img or the CA certificates are missing.
RUN "${VENV}/bin/python" -c "import libvirt, lxml.etree, psycopg" \
 && qemu-img --version > /dev/null \
 && dpkg-query -W ca-certificates > /dev/null

ENV PATH="${VENV}/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VMBACKUP_HOST=0.0.0.0 \
    VMBACKUP_PORT=8080 \
    VMBACKUP_DATA_DIR=/var/lib/vmbackup \
    VMBACKUP_SOCKET_ROOT=/run/vmbackup

USER vmbackup
WORKDIR /home/vmbackup
EXPOSE 8080

# /livez: the process is up. (/readyz, which also checks the database and the worker
# pool, is for load balancers and Kubernetes readiness, not for restarting a container.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('VMBACKUP_TLS_CERT')); urllib.request.urlopen('%s://127.0.0.1:%s/livez' % ('https' if tls else 'http', os.environ.get('VMBACKUP_PORT', '8080')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["vmbackup", "serve"]
