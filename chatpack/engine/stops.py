"""Stop sequences in generated text: where one ends the reply, and how much text to hold back while streaming."""

from __future__ import annotations


def find_stop(text: str, stops: tuple[str, ...], emitted: int = 0) -> int | None:
    """Index where the earliest stop sequence starts in ``text`` (searching only where a new one can be), or None."""
    if not stops:
        return None
    start = max(0, emitted - max(len(s) for s in stops))
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
