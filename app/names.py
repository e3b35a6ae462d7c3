"""Allow-listed names: anything a client names that reaches libvirt or a path.

Patterns are checked by pydantic-core, where `$` is the end of the text: a
trailing newline does not match (Python's `re` would let one through `$`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

NAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_PATTERN = re.compile(NAME_REGEX)

Name = Annotated[str, StringConstraints(pattern=NAME_REGEX)]

# C0 and C1 control characters and DEL.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
# A libvirt domain name or UUID, as a client names it: libvirt allows more than
# `Name`, but nothing invisible, and no white space at either end.
DOMAIN_REF_REGEX = rf"^[^\s{_CONTROL}](?:[^{_CONTROL}]{{0,253}}[^\s{_CONTROL}])?$"
# Free text (descriptions): tab and line breaks, but no NUL or other control character.
FREE_TEXT_REGEX = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
# A path a client gives: where it may point is the planner's rule; this keeps out
# what no file name should hold (a NUL would even stop the OS call).
PATH_TEXT_REGEX = rf"^[^{_CONTROL}]+$"

FreeText = Annotated[str, StringConstraints(max_length=1024, pattern=FREE_TEXT_REGEX)]
PathText = Annotated[str, StringConstraints(max_length=4096, pattern=PATH_TEXT_REGEX)]
