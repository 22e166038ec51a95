"""One way to open a Redis client, with timeouts that fit the consumer's blocking reads."""

from __future__ import annotations

from redis.asyncio import Redis

# XREADGROUP BLOCK (at most 4 s, see settings) must return before the socket times out.
SOCKET_TIMEOUT_S = 10.0


def connect(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=False,
    )
