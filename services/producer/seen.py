"""The ids an upload has already seen (its dedupe): a set of ints where an id allows it.

A ``set`` of a million 16-digit id strings takes ~110 MiB (80 bytes a str with the allocator's
rounding, plus 32 MiB of slots): most of the producer's peak during a 1,000,000-row upload. An
id without a leading zero and of at most 18 digits is kept as ``int(id)`` instead (32 bytes):
~62 MiB a million. Exact: ``int`` is one-to-one on such strings, and every other id (a leading
zero, more digits) is kept as its string, which never equals an int.

Batches, not ids: ``first()`` checks a batch with a few C-level passes (``isdisjoint``,
``update``), a loop per id only when the batch repeats an id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from operator import itemgetter

_MAX_DIGITS = 18  # every int of up to 18 digits is a small (32-byte) int object
_FIRST = itemgetter(0)


def _plain(ids: Sequence[str]) -> bool:
    """Every id 1-18 ASCII digits, the first not a zero."""
    lengths = set(map(len, ids))
    if min(lengths) < 1 or max(lengths) > _MAX_DIGITS:
        return False
    joined = "".join(ids)
    if not (joined.isascii() and joined.encode().isdigit()):
        return False
    # The first digits: every length-th character when all ids are as long (the usual case)
    firsts = joined[:: lengths.pop()] if len(lengths) == 1 else "".join(map(_FIRST, ids))
    return "0" not in firsts


def _key(psid: str) -> int | str:
    plain = psid.isascii() and psid.isdigit() and len(psid) <= _MAX_DIGITS
    return int(psid) if plain and psid[0] != "0" else psid


class SeenIds:
    """A set of id strings, stored compactly; iterating gives the strings back."""

    def __init__(self) -> None:
        self._keys: set[int | str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, psid: object) -> bool:
        return isinstance(psid, str) and _key(psid) in self._keys

    def __iter__(self) -> Iterator[str]:
        return (k if isinstance(k, str) else str(k) for k in self._keys)

    def first(self, ids: Sequence[str]) -> list[bool] | None:
        """Records the ids; answers None when each is new (the usual case), otherwise for
        each id whether this is its first occurrence (the first row wins)."""
        if not ids:
            return None
        keys: list[int | str] = list(map(int, ids)) if _plain(ids) else list(map(_key, ids))
        if self._keys.isdisjoint(keys):
            before = len(self._keys)
            self._keys.update(keys)
            if len(self._keys) - before == len(keys):
                return None
            self._keys.difference_update(keys)  # a repeat inside the batch: one by one
        out = []
        for key in keys:
            out.append(key not in self._keys)
            self._keys.add(key)
        return out
