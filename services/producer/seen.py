"""The ids an upload has already seen (its dedupe): an exact set in a flat array of ints.

A Python ``set`` of a million 16-digit id strings takes ~110 MiB (an 80-byte str each with the
allocator's rounding, plus 32 MiB of slots), and still 62 MiB as ints: most of the producer's
peak during a 1,000,000-row upload. Here an id of at most 18 digits without a leading zero is
``int(id)`` in one 8-byte slot of an open-addressing table (linear probing, at most a third
full): 32 MiB for a million, nothing per id on the heap. Every other id (a leading zero, more
digits, not digits) goes to a plain set beside it; it never equals an int, so the whole stays
exact (int() is one-to-one on the ids the table takes).

- Slots come from ``hash(id)``, Python's keyed SipHash of the string (random per process), so
  a CSV crafted to collide cannot make the probing quadratic.
- Batches, not ids: each probe round is a few C-level passes over the batch's ids still
  looking for a slot (gather with ``itemgetter``, compare with ``map(eq)``, scatter with
  ``map(array.__setitem__)``), so there is no Python loop per id.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import compress, repeat
from operator import and_, eq, itemgetter, ne, not_

_MAX_DIGITS = 18  # int("9" * 18) < 2**63: fits a signed 64-bit slot
_MIN_SLOTS = 1 << 12
_FILL = 3  # slots per id at least: probes stay short
_REHASH = 1 << 16  # slots moved at a time when the table grows (bounded transient memory)
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


def _gather(table: array[int], slots: list[int]) -> tuple[int, ...]:
    if len(slots) == 1:  # itemgetter of one index answers the item, not a tuple
        return (table[slots[0]],)
    return itemgetter(*slots)(table)  # type: ignore[no-any-return]


class SeenIds:
    """A set of id strings, kept compactly; iterating gives the strings back."""

    def __init__(self, expected: int = 0) -> None:
        self._table: array[int] = array("q", bytes(8 * _MIN_SLOTS))
        self._count = 0  # ids in the table
        self._other: set[str] = set()  # ids the table cannot hold
        self.expect(expected)

    def expect(self, count: int) -> None:
        """Room for ``count`` ids without growing (growing moves every id once more)."""
        self._grow(count)

    def __len__(self) -> int:
        return self._count + len(self._other)

    def __contains__(self, psid: object) -> bool:
        if not isinstance(psid, str):
            return False
        if not _plain([psid]):
            return psid in self._other
        table, mask, key = self._table, len(self._table) - 1, int(psid)
        slot = hash(psid) & mask
        while table[slot]:
            if table[slot] == key:
                return True
            slot = (slot + 1) & mask
        return False

    def __iter__(self) -> Iterator[str]:
        for at in range(0, len(self._table), _REHASH):
            yield from map(str, filter(None, self._table[at : at + _REHASH]))
        yield from self._other

    def first(self, ids: Sequence[str]) -> list[bool] | None:
        """Records the ids; answers None when each is new (the usual case), otherwise for
        each id whether this is its first occurrence (the first row wins)."""
        if not ids:
            return None
        if not _plain(ids):
            return self._one_by_one(ids)
        self._grow(self._count + len(ids))
        keys = list(map(int, ids))
        slots = list(map(and_, map(hash, ids), repeat(len(self._table) - 1)))
        # Equal ids have equal slots: distinct slots rule out a repeat inside the batch.
        if len(set(slots)) != len(slots) and len(set(keys)) != len(keys):
            return self._one_by_one(ids)
        repeated = self._insert(keys, slots)
        self._count += len(ids) - len(repeated)
        if not repeated:
            return None
        return [i not in repeated for i in range(len(ids))]

    def _insert(self, keys: list[int], slots: list[int]) -> set[int]:
        """Adds distinct keys, each probing from its slot; answers the indexes of the keys
        that were already there."""
        table, mask = self._table, len(self._table) - 1
        index: Sequence[int] = range(len(keys))
        repeated: set[int] = set()
        while True:
            held = _gather(table, slots)
            found = any(map(eq, held, keys))
            if found:  # rare: an id of an earlier batch
                repeated.update(compress(index, map(eq, held, keys)))
            free = list(map(not_, held))
            writing = list(compress(slots, free))
            deque(map(table.__setitem__, writing, compress(keys, free)), 0)
            if not found and len(set(writing)) == len(writing):
                # Each free slot taken by one key: those keys are in; the rest met another
                # key and probe on.
                moving = list(map(bool, held))
            else:
                # Two keys may have taken the same free slot: the one there now holds it,
                # the other probes on, as does every key whose slot holds another key.
                moving = list(map(ne, _gather(table, slots), keys))
            if not any(moving):
                return repeated
            index = list(compress(index, moving))
            keys = list(compress(keys, moving))
            slots = [(slot + 1) & mask for slot in compress(slots, moving)]

    def _grow(self, needed: int) -> None:
        size = len(self._table)
        while size < _FILL * needed:
            size *= 2
        if size == len(self._table):
            return
        old, self._table = self._table, array("q", bytes(8 * size))
        mask = size - 1
        for at in range(0, len(old), _REHASH):
            keys = list(filter(None, old[at : at + _REHASH]))
            if keys:
                self._insert(keys, list(map(and_, map(hash, map(str, keys)), repeat(mask))))

    def _one_by_one(self, ids: Sequence[str]) -> list[bool] | None:
        """A repeat inside the batch, or ids the table cannot hold: each id on its own."""
        out = []
        for psid in ids:
            if _plain([psid]):
                self._grow(self._count + 1)
                mask = len(self._table) - 1
                new = not self._insert([int(psid)], [hash(psid) & mask])
                self._count += new
            else:
                new = psid not in self._other
                self._other.add(psid)
            out.append(new)
        return None if all(out) else out
