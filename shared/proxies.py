"""Which egress proxy reaches a URL, read from the environment the way curl, requests and
httpx read it, so one set of variables serves every HTTP client in the pod:

- ``HTTPS_PROXY`` (or ``https_proxy``) for https URLs, ``HTTP_PROXY`` (or ``http_proxy``) for
  http ones, ``ALL_PROXY`` (``all_proxy``) for either when the specific one is unset; the
  lower-case name wins when both are set, as in curl;
- ``NO_PROXY`` (``no_proxy``): comma-separated hosts that go direct. ``*`` matches everything;
  a name matches itself and its subdomains (``example.com`` and ``.example.com`` both match
  ``graph.example.com``); an IP address or a CIDR block matches addresses; ``host:port``
  matches that port only. Loopback is not special (curl's rule): list it to bypass.

Only ``http://`` proxies: the connection to the proxy is plain, the tunnel inside is TLS end to
end with the origin (``CONNECT``), so the proxy never sees a token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit


class ProxyError(ValueError):
    """A proxy variable that cannot be used; the message names it."""


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def _no_proxy_matches(host: str, port: int, entries: str) -> bool:
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in entries.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name or entry
        if address is not None:
            try:
                if address in ipaddress.ip_network(name.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL to reach ``url`` through, or None to go direct."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    no_proxy = _variable(environ, "NO_PROXY")
    if no_proxy is not None and _no_proxy_matches(host, port, no_proxy[1]):
        return None
    found = _variable(environ, f"{parts.scheme}_PROXY") or _variable(environ, "ALL_PROXY")
    if found is None:
        return None
    name, value = found
    if "://" not in value:
        value = "http://" + value  # curl's reading of "proxy:3128"
    proxy = urlsplit(value)
    if proxy.scheme != "http" or not proxy.hostname:
        raise ProxyError(f"{name} must be an http:// proxy URL (host:port), not {proxy.scheme}://")
    try:
        proxy.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ProxyError(f"{name} has a port that is not a number") from None
    return value
