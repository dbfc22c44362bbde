"""Lineage ordering of variants: parents before children."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def lineage_order(
    items: Sequence[T], key: Callable[[T], Hashable], parent: Callable[[T], Hashable | None]
) -> list[T]:
    """Parents before children, otherwise keeping the given order. Raises ValueError on a cycle."""
    by_id = {key(item): item for item in items}
    done: set[Hashable] = set()
    out: list[T] = []
    for item in items:
        chain: list[T] = []
        on_chain: set[Hashable] = set()
        node = item
        # Walk up to the first ancestor already placed (or outside the set), then emit downwards.
        while node is not None and key(node) not in done:
            if key(node) in on_chain:
                raise ValueError(f"lineage cycle through variant {key(node)!r}")
            on_chain.add(key(node))
            chain.append(node)
            node = by_id.get(parent(node))
        for node in reversed(chain):
            done.add(key(node))
            out.append(node)
    return out


__all__ = ["lineage_order"]
