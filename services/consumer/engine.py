"""The stream engine: one consumer group's work read from a stream per shard, with leases,
reclaim and drain, for any kind of work that plugs in a ``Kind``.

Engine.run()
  ├── one reader per stream: XREADGROUP (BLOCK) only while ``kind.room()`` says there is room
  │   (no hoarding), each entry handed to ``kind.handle`` in a task of its own; a read that
  │   came back short (the stream had nothing more waiting) asks ``top_up`` for more work
  │   for the room there is now (chunks: the release window follows demand, demand.py)
  ├── upkeep: renew the leases of held entries (owner-checked, every third of the lease);
  │   XAUTOCLAIM entries idle past the lease, looping on its cursor, counting the deleted ids
  └── stop(): stop reading; wait for held entries until the drain deadline; cancel the rest
      and give them to ``kind.hand_back`` so the fleet takes them at once, not after a lease

The contract of a ``Kind`` (drawn small on purpose): which streams and group, how much room,
how to handle one entry (it settles the entry itself: XACK and delete, or leave it pending for
reclaim), what to do with entries a drain could not finish, and two notices (an entry taken
over, pending entries found deleted) for its metrics. A kind never reads, renews or reclaims
on its own. Three kinds plug in: chunks (worker.py), completion callbacks (callbacks.py) and
Meta's webhook events (events.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

HAND_BACK_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": anyone's next XAUTOCLAIM
_RECLAIM_MIN_S = 0.2  # take-over calls come at least this far apart, whatever the lease


class Entry:
    """One stream entry this consumer holds, from read (or reclaim) until settled."""

    __slots__ = ("deliveries", "entry_id", "fields", "stream", "task", "work")

    def __init__(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        self.stream = stream  # settle against the stream the entry came from
        self.entry_id = entry_id
        self.fields = fields
        self.deliveries = deliveries
        self.task: asyncio.Task[None] | None = None
        self.work: object = None  # the kind's own state of the entry (for its hand-back)


class Kind(Protocol):
    name: str  # for logs
    group: str

    @property
    def streams(self) -> Collection[str]:
        """One stream per shard, all read by ``group``."""

    def room(self, held: int) -> int:
        """How many more entries to take now, ``held`` being held."""

    async def handle(self, entry: Entry) -> None:
        """Do the entry's work and settle it; raising leaves it pending for reclaim."""

    async def hand_back(self, entries: list[Entry]) -> None:
        """Entries a drain cancelled: put them where the fleet takes them at once."""

    def taken_over(self, entry: Entry) -> None:
        """An entry idle past its lease was taken over from another consumer."""

    def deleted(self, stream: str, ids: list[bytes]) -> None:
        """Pending entries were deleted from the stream (XAUTOCLAIM's third answer)."""


class Engine:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        kind: Kind,
        consumer: str,
        *,
        claim_idle_ms: int,
        block_ms: int,
        drain_s: float,
        cancel_lost: bool = False,
        top_up: Callable[[str, int], Awaitable[int]] | None = None,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.kind = kind
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.drain_s = drain_s
        self.cancel_lost = cancel_lost  # stop work another consumer took over (else log only)
        # (stream, wanted) -> entries released: called when a read found fewer than it had
        # room for, so there is nothing else waiting in the stream that they would overtake.
        self.top_up = top_up
        self.held: dict[tuple[str, bytes], Entry] = {}  # ids are unique per stream only
        self.stopping = asyncio.Event()
        self._room = asyncio.Event()
        self._away = False  # Redis failed or stalled an upkeep call: leases may have lapsed
        self._quiet_until = 0.0  # loop time: no take-over before then (Redis was away)

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        await self.join_groups()
        upkeep = asyncio.create_task(self._upkeep())
        try:
            await asyncio.gather(*(self._read_loop(stream) for stream in self.kind.streams))
        finally:
            await self._drain()
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)

    def stop(self) -> None:
        self.stopping.set()
        self._room.set()

    def wake(self) -> None:
        """Room may have opened (an entry settled, a held one stopped claiming capacity)."""
        self._room.set()

    async def join_groups(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                for stream in self.kind.streams:
                    try:
                        # At 0, never $: entries added before the group existed are work too.
                        await self.redis.xgroup_create(
                            stream, self.kind.group, id="0", mkstream=True
                        )
                    except ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise
                return
            except (RedisError, OSError) as exc:
                log.warning(
                    "groups not ready; retrying", extra={"kind": self.kind.name, "error": str(exc)}
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)

    async def _drain(self) -> None:
        tasks = [e.task for e in self.held.values() if e.task is not None]
        if not tasks:
            return
        log.info("draining", extra={"kind": self.kind.name, "entries": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=self.drain_s)
        if pending:
            leftovers = list(self.held.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.kind.hand_back(leftovers)

    # --- reading --------------------------------------------------------------------------

    async def _read_loop(self, stream: str) -> None:
        """One reader per stream, so a quiet shard never holds up a busy one (and every read
        touches one slot, as a Redis Cluster needs)."""
        backoff_s = 0.1
        # With a top_up, a read that filled its count is followed by one that does not block:
        # if the stream is empty now, the ask for more comes at once, not after block_ms.
        blocking = True
        while not self.stopping.is_set():
            room = self.kind.room(len(self.held))
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            # Readers share the room: each asks for its part, at least one entry.
            count = max(1, room // len(self.kind.streams))
            block = self.block_ms if blocking else None
            try:
                reply = await self.redis.xreadgroup(
                    self.kind.group, self.consumer, {stream: ">"}, count=count, block=block
                )
                backoff_s = 0.1
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted under us: recreate
                    await self.join_groups()
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("read failed; retrying", extra={"stream": stream, "error": str(exc)})
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)
                continue
            replies = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]], reply)
            got = 0
            for _, entries in replies or []:
                got += len(entries)
                for entry_id, fields in entries:
                    self.take(stream, entry_id, fields or {}, 1)
            blocking = True
            if self.top_up is None or self.stopping.is_set():
                continue
            if got == count:
                blocking = False
                continue
            # Nothing more was waiting in the stream. The count was set before the read
            # blocked, maybe long ago: the room is weighed again for the ask.
            room = self.kind.room(len(self.held))
            if room > 0:
                await self._top_up(self.top_up, stream, max(1, room // len(self.kind.streams)))

    @staticmethod
    async def _top_up(
        top_up: Callable[[str, int], Awaitable[int]], stream: str, wanted: int
    ) -> int:
        """Ask the kind for more work on ``stream``; what it releases is read next round."""
        try:
            return await top_up(stream, wanted)
        except (RedisError, OSError) as exc:
            # Nothing lost: the work stays where it was, and the next short read asks again.
            log.warning("top-up failed", extra={"stream": stream, "error": str(exc)})
            return 0

    def take(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> Entry:
        """Hold an entry and start its task (from a read or a reclaim), unless held already."""
        held = self.held.get((stream, entry_id))
        if held is not None:
            return held
        entry = Entry(stream, entry_id, fields, deliveries)
        self.held[(stream, entry_id)] = entry
        entry.task = asyncio.create_task(self._handle(entry))
        return entry

    async def _handle(self, entry: Entry) -> None:
        try:
            await self.kind.handle(entry)
        except (RedisError, OSError) as exc:
            log.warning(
                "entry left for reclaim",
                extra={"kind": self.kind.name, "entry": entry.entry_id.decode(), "error": str(exc)},
            )
        except Exception:
            log.exception(
                "entry failed unexpectedly",
                extra={"kind": self.kind.name, "entry": entry.entry_id.decode()},
            )
        finally:
            self.held.pop((entry.stream, entry.entry_id), None)
            self._room.set()

    # --- upkeep ---------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        await asyncio.gather(
            self._every(self.claim_idle_ms / 3000, self.renew),
            self._every(max(_RECLAIM_MIN_S, self.claim_idle_ms / 2000), self.reclaim),
        )

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await step()
                if loop.time() - started > seconds:
                    self._redis_was_away()  # a stall (or redis-py's retries hid an outage)
            except (RedisError, OSError) as exc:
                self._redis_was_away()
                log.warning("upkeep step failed", extra={"step": step.__name__, "error": str(exc)})
            except Exception:
                log.exception("upkeep step failed", extra={"step": step.__name__})
            await asyncio.sleep(seconds)

    async def lease(self, entries: list[Entry], idle_ms: int) -> list[Entry]:
        """Renew (idle 0) or hand back (HAND_BACK_IDLE_MS) held entries, owner-checked;
        the ones another consumer has taken over."""
        by_stream: dict[str, list[Entry]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        lost: list[Entry] = []
        for stream, group in by_stream.items():
            ids = [e.entry_id for e in group]
            gone = set(
                await self.scripts.lease(
                    keys=[stream, keys.lease_clock(stream)],
                    args=[self.kind.group, self.consumer, idle_ms, *self._stall_args(), *ids],
                )
            )
            lost += [e for e in group if e.entry_id in gone]
        return lost

    async def renew(self) -> None:
        lost = await self.lease(list(self.held.values()), 0)
        stolen = [e for e in lost if (e.stream, e.entry_id) in self.held]
        if stolen:
            log.warning("lease lost", extra={"kind": self.kind.name, "entries": len(stolen)})
        for entry in stolen if self.cancel_lost else []:
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()

    def _stall_args(self) -> tuple[int, int]:
        """For the lease clock (lib.lua): no renewal or take-over on a stream for longer than
        this gap means Redis was stalled or away (normally the fleet's calls come every third
        of a lease, and take-overs at least every 200 ms); then take-overs wait half a lease."""
        return max(self.claim_idle_ms, int(3 * _RECLAIM_MIN_S * 1000)), self.claim_idle_ms // 2

    def _redis_was_away(self) -> None:
        """Leases may have lapsed meanwhile, the live ones too."""
        self._away = True

    async def _quiet(self) -> bool:
        """Whether to take nothing over now: for half a lease from when Redis answers again
        after being away, long enough for live holders (renewing every third of it) to renew
        theirs, else their chunks' unwritten answers would go out twice."""
        loop = asyncio.get_running_loop()
        if self._away:
            await self.redis.ping()  # raises while Redis is still away
            self._away = False
            self._quiet_until = loop.time() + self.claim_idle_ms / 2000
        return loop.time() < self._quiet_until

    def _take_over(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        if (stream, entry_id) not in self.held and not self.stopping.is_set():
            self.kind.taken_over(self.take(stream, entry_id, fields, deliveries))

    async def reclaim(self) -> None:
        if self.stopping.is_set() or await self._quiet():
            return
        loop = asyncio.get_running_loop()
        for stream in self.kind.streams:
            cursor: bytes | str = "0-0"
            while (room := self.kind.room(len(self.held))) > 0:
                started = loop.time()
                cursor, entries, deleted = await self.scripts.reclaim(
                    keys=[stream, keys.lease_clock(stream)],
                    args=[
                        *(self.kind.group, self.consumer, self.claim_idle_ms, cursor, room),
                        *self._stall_args(),
                    ],
                )
                # A call held up by an outage (redis-py retries it) claimed on Redis's return,
                # maybe live holders' entries: start them only after the quiet period, by
                # when a live holder has finished or written what it got.
                late = loop.time() - started > self.claim_idle_ms / 3000
                if late:
                    self._redis_was_away()
                if deleted:
                    log.error(
                        "pending entries were deleted from the stream",
                        extra={"stream": stream, "entries": [d.decode() for d in deleted]},
                    )
                    self.kind.deleted(stream, list(deleted))
                for entry_id, flat, deliveries in entries:
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    log.info(
                        "entry taken over",
                        extra={
                            "kind": self.kind.name,
                            "entry": entry_id.decode(),
                            "deliveries": deliveries,
                        },
                    )
                    if late:
                        loop.call_later(
                            self.claim_idle_ms / 2000,
                            self._take_over,
                            stream,
                            entry_id,
                            fields,
                            int(deliveries),
                        )
                    elif (stream, entry_id) not in self.held:
                        self._take_over(stream, entry_id, fields, int(deliveries))
                if cursor in (b"0-0", "0-0"):
                    break
