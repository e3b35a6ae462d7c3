"""Checkpoint trees from parent names: libvirt redefines a checkpoint only under
its parent, and the API lists parents before children."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def parents_first(
    items: Iterable[T], name: Callable[[T], str], parent: Callable[[T], str | None]
) -> list[T]:
    """Depth first from the roots, keeping the given order among siblings.
    An item whose parent is not among them is a root."""
    by_name = {name(item): item for item in items}
    children: dict[str | None, list[T]] = defaultdict(list)
    for item in by_name.values():
        up = parent(item)
        children[up if up in by_name else None].append(item)
    ordered: list[T] = []
    stack = list(reversed(children[None]))
    while stack:
        item = stack.pop()
        ordered.append(item)
        stack.extend(reversed(children[name(item)]))
    # A cycle (only a corrupted record could hold one) has no root: keep it, last.
    seen = {name(item) for item in ordered}
    return ordered + [item for key, item in by_name.items() if key not in seen]


def descendants(root: str, parents: Mapping[str, str | None]) -> list[str]:
    """Every name below `root`, parents before children."""
    found: list[str] = []
    frontier = [root]
    while frontier:
        below = [n for n, up in parents.items() if up in frontier and n != root and n not in found]
        found.extend(below)
        frontier = below
    return found
