"""Allow-listed names: anything a client names that reaches libvirt or a path."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

NAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_PATTERN = re.compile(NAME_REGEX)

Name = Annotated[str, StringConstraints(pattern=NAME_REGEX)]
