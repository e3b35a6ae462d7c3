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

The operator's own URI (`VMBACKUP_LIBVIRT_URI`) may also name the files the
operator mounted for it (`pkipath`, `keyfile`, `known_hosts`, absolute paths);
still no program, socket, or verification turned off. A URI sent to the API
takes no parameter at all.
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
OPERATOR_PARAMETERS = frozenset({"pkipath", "keyfile", "known_hosts"})
_OPERATOR_PARAMETER = re.compile(r"(?P<name>[a-z_]+)=(?P<value>/[A-Za-z0-9._/-]{0,1023})")


class UriRefused(Exception):
    """A URI outside the allow-list; the message says why and quotes no file."""


def check_host_uri(uri: str, *, allow_tcp: bool, parameters: frozenset[str] = frozenset()) -> str:
    """Return `uri` when the service may open it, else raise `UriRefused`.
    `parameters`: the query parameters allowed (none for a client's URI)."""
    if uri == LOCAL_SYSTEM:
        return uri
    base, _, query = uri.partition("?")
    if "#" in uri or "%" in uri:
        raise UriRefused("a host URI takes no fragment or %-escapes (they could hide a parameter)")
    if query:
        _check_parameters(query, parameters)
    _check_base(base, allow_tcp=allow_tcp)
    return uri


def _check_parameters(query: str, allowed: frozenset[str]) -> None:
    if not allowed:
        # None is needed for a plain connection, and each one libvirt knows names
        # a program, a file or a socket, or turns a check off.
        raise UriRefused("a host URI takes no query parameters")
    for parameter in query.split("&"):
        match = _OPERATOR_PARAMETER.fullmatch(parameter)
        if match is None or match["name"] not in allowed:
            name = parameter.partition("=")[0][:32]
            raise UriRefused(
                f"parameter {name!r} is not allowed; only {', '.join(sorted(allowed))} "
                "with an absolute path"
            )


def _check_base(uri: str, *, allow_tcp: bool) -> None:
    if uri == LOCAL_SYSTEM:
        return
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


def _scheme(uri: str) -> str:
    match = _SCHEME.match(uri)
    if match is None or not uri[match.end() :].startswith("//"):
        raise UriRefused("must be a libvirt URI such as qemu+tls://host/system")
    return match["scheme"].lower()
