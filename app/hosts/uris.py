"""Which libvirt URIs the service opens: an allow-list, checked before libvirt is called.

libvirt's remote driver acts on what a URI says: `?command=` and `?netcat=` name a
program to run, `?keyfile=`/`?pkipath=`/`?socket=` name files, `?no_verify=1` turns
TLS checks off, `test:///<file>` parses a host file (and quotes it in its error),
`qemu:///embed?root=` starts an embedded driver on any directory. A host URI is
therefore one of a few shapes, with no query at all:

- `qemu:///system`: the local system daemon;
- `qemu+tls://host[:port]/system` (or `qemu://host/system`, TLS too) and
  `qemu+ssh://[user@]host[:port]/system`;
- `qemu+tcp://host[:port]/system` only when a setting allows it: plain TCP has no
  encryption, and would let an admin make the service probe internal ports.
"""

from __future__ import annotations

import re

LOCAL_SYSTEM = "qemu:///system"
REMOTE_SCHEMES = ("qemu+tls", "qemu+ssh", "qemu")
TCP_SCHEME = "qemu+tcp"

# Host names, IPv4 and bracketed IPv6 literals; a first character that is not
# '-' so that nothing can read as an option of ssh.
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
_USER = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
_REMOTE = re.compile(
    rf"(?P<scheme>[a-z0-9+]+)://(?:(?P<user>{_USER})@)?(?P<host>{_HOST})"
    r"(?::(?P<port>[0-9]{1,5}))?/system"
)
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


class UriRefused(Exception):
    """A URI outside the allow-list; the message says why and quotes no file."""


def check_host_uri(uri: str, *, allow_tcp: bool) -> str:
    """Return `uri` when the service may open it, else raise `UriRefused`."""
    if uri == LOCAL_SYSTEM:
        return uri
    if "?" in uri or "#" in uri or "%" in uri:
        # No parameter is needed for a plain connection, and each libvirt knows
        # names a program, a file or a check to turn off; escapes could hide one.
        raise UriRefused("a host URI takes no query parameters, fragment or %-escapes")
    scheme = _scheme(uri)
    allowed = (*REMOTE_SCHEMES, TCP_SCHEME) if allow_tcp else REMOTE_SCHEMES
    if scheme == TCP_SCHEME and not allow_tcp:
        raise UriRefused(
            "qemu+tcp:// is plain, unauthenticated TCP: it needs VMBACKUP_ALLOW_TCP_HOSTS"
        )
    if scheme not in allowed:
        remote = ", ".join(f"{name}://" for name in allowed)
        raise UriRefused(f"allowed: {LOCAL_SYSTEM}, or {remote} to a remote host")
    match = _REMOTE.fullmatch(uri)
    if match is None:
        raise UriRefused(f"must read {scheme}://[user@]host[:port]/system")
    if match["user"] and scheme != "qemu+ssh":
        raise UriRefused("a user name is for qemu+ssh:// only")
    if match["port"] and not 1 <= int(match["port"]) <= 65535:
        raise UriRefused("the port must be 1 to 65535")
    return uri


def _scheme(uri: str) -> str:
    match = _SCHEME.match(uri)
    if match is None or not uri[match.end() :].startswith("//"):
        raise UriRefused("must be a libvirt URI such as qemu+tls://host/system")
    return match["scheme"].lower()
