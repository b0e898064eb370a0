"""Wording shared by the messages jobs and commands print: counts with their nouns, and
short lists of where something is."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["listed", "plural"]


def plural(n: int, singular: str, many: str | None = None) -> str:
    """``n`` with the noun phrase that agrees with it: ``plural(1, "row")`` is "1 row",
    ``plural(2, "row names", "rows name")`` is "2 rows name" (default: ``singular + "s"``).
    """
    return f"{n} {singular if n == 1 else many or singular + 's'}"


def listed(noun: str, items: Iterable[object], limit: int = 5) -> str:
    """``noun`` and the first ``limit`` items: "line 4", "lines 4, 9 and 12",
    "lines 4, 9, 12, 15, 20 and 3 more". ``items`` must not be empty."""
    shown = [str(i) for i in items]
    more = len(shown) - limit
    word = noun if len(shown) == 1 else noun + "s"
    if more > 0:
        return f"{word} {', '.join(shown[:limit])} and {more} more"
    if len(shown) > 1:
        return f"{word} {', '.join(shown[:-1])} and {shown[-1]}"
    return f"{word} {shown[0]}"
