"""What clients may see of a message from libvirt or a tool: no path on the host.

libvirt and qemu-img name the files they failed on, and some errors quote a
file's content after its name. The full message goes to the log; a client
sees it with every absolute path replaced."""

from __future__ import annotations

import re

PLACEHOLDER = "<path>"
# A quoted absolute path may hold spaces; libvirt and qemu-img quote theirs.
_QUOTED_PATH = re.compile(r"""(['"])/[^'"]*\1""")
# An unquoted one: a '/' at the start, or after white space, '=' or an opening
# bracket, up to white space; the '/' in `qemu:///system` or `10.0.0.1/system` stays.
_ABSOLUTE_PATH = re.compile(r"""(?<![^\s=(\[<,])/(?!/)[^\s'"<>()\[\]{},;]*[^\s'"<>()\[\]{},;:.]""")


def redact_paths(message: str) -> str:
    quoted = _QUOTED_PATH.sub(lambda match: f"{match[1]}{PLACEHOLDER}{match[1]}", message)
    return _ABSOLUTE_PATH.sub(PLACEHOLDER, quoted)
