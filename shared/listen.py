"""Listening sockets, bound before a service opens Redis or logs that it started.

A port another process holds is a configuration conflict, not a crash: it is raised as a
``SettingsError`` naming the setting, so the CLI prints one line and exits 2 (and nothing was
started that would need undoing). Port 0 asks the kernel for a free one: read it back with
``bound_port``.
"""

from __future__ import annotations

import socket

from shared.settings import SettingsError


def listen(host: str, port: int, setting: str, hint: str = "") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted process rebind over connections in TIME_WAIT; two live listeners on one
    # port still conflict (that would take SO_REUSEPORT).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        message = f"{setting}={port}: cannot listen on {host}:{port} ({reason})"
        raise SettingsError(f"{message}; {hint}" if hint else message) from None
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
