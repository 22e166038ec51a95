"""Completion callbacks: which URLs a job may call back, and how the call is signed.

When a job that carries ``callback_url`` ends (completed, failed or cancelled), a consumer POSTs
the job view (the same JSON as ``GET /v1/jobs/{id}``) to that URL (``services/consumer/
callbacks.py``).

Targets. A callback is a request fanout makes on a tenant's behalf, so it must not reach into
the network fanout runs in (server-side request forgery). ``check_target`` accepts only
``http``/``https`` URLs with a host and no user info, whose every address is public: loopback,
private (RFC 1918), link-local (169.254/16, the cloud metadata service), shared CGNAT
(100.64/10), unique-local (fc00::/7), multicast, unspecified and reserved addresses are
refused, also when embedded in an IPv6 address (IPv4-mapped, 6to4, NAT64). An entry of
``FANOUT_CALLBACK_ALLOW`` (an exact host name, an IP or a CIDR) lets a host or address through
anyway. The producer checks at submit time; the sender checks again before every POST and
connects to the address it checked (``resolve_target``), so a name that resolves elsewhere a
second later (DNS rebinding) is not followed.

Signatures, for receivers. When the tenant has a key (``FANOUT_CALLBACK_SECRETS``), the
request carries ``X-Fanout-Signature: sha256=<hex HMAC-SHA256 of the raw body>``. Verify it on
the bytes received, before parsing them, in constant time::

    from shared.callbacks import verify   # or the same three lines with hmac + hashlib

    if not verify(secret, request_body_bytes, request.headers["X-Fanout-Signature"]):
        return 401

``X-Fanout-Job`` names the job. Delivery is at least once: a receiver should treat a repeated
job id as the same notification.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import socket

import httpx
import msgspec

SIGNATURE_HEADER = "X-Fanout-Signature"
JOB_HEADER = "X-Fanout-Job"
_SIGNATURE_PREFIX = "sha256="

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Target(msgspec.Struct, frozen=True):
    """A checked callback URL: where to connect, and what to say in Host and SNI."""

    url: httpx.URL
    host: str  # as resolved: lower case, IDNA-encoded, no brackets
    addresses: tuple[str, ...]  # every address the host resolved to, all checked

    def pinned(self, address: str) -> httpx.URL:
        """The URL with its host replaced by one of the checked addresses."""
        return self.url.copy_with(host=address)

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")

    @property
    def is_name(self) -> bool:
        return not _is_ip(self.host)


def check_target(url: str, allow: tuple[str, ...]) -> None:
    """Raise ValueError, with a message fit for a 422, unless ``url`` may be called back."""
    resolve_target(url, allow)


def resolve_target(url: str, allow: tuple[str, ...]) -> Target:
    """``check_target`` that also returns the addresses it checked, to connect to one of them.

    Blocking (it resolves the host name): from async code, call it in a thread."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"callback_url is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError("callback_url must be an http or https URL")
    if parsed.userinfo:
        raise ValueError("callback_url must not contain a user name or password")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise ValueError("callback_url has no host")
    names, networks = _allow_list(allow)
    addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    if host.rstrip(".") not in names:
        for address in addresses:
            refusal = _refusal(address, networks)
            if refusal is not None:
                where = (
                    f"callback_url address {address}"
                    if _is_ip(host)
                    else f"callback_url host {host!r} resolves to {address}, which"
                )
                raise ValueError(
                    f"{where} is {refusal}; callbacks go to public addresses only "
                    "(FANOUT_CALLBACK_ALLOW lists exceptions)"
                )
    return Target(parsed, host, tuple(str(a) for a in addresses))


def sign(secret: str, body: bytes) -> str:
    """The ``X-Fanout-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the body."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return _SIGNATURE_PREFIX + digest


def verify(secret: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is ``sign(secret, body)``; compared in constant time."""
    expected = sign(secret, body).encode("ascii")
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


# --- internals ------------------------------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _allow_list(allow: tuple[str, ...]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in allow:
        text = entry.strip().lower()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            names.add(text.rstrip("."))
    return frozenset(names), tuple(networks)


def _resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses: an IP literal as is, a name through getaddrinfo (which also
    reads the legacy forms such as ``2130706433`` or ``0x7f.1``, so they are checked too)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"callback_url host {host!r} cannot be resolved ({exc})") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone (fe80::1%eth0); the zone is not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError(f"callback_url host {host!r} has no address")
    return addresses


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why the address may not be called back, or None when it may. An IPv6 address that only
    carries an IPv4 one (mapped, 6to4, NAT64) is judged by the IPv4 address it reaches."""
    inner = _embedded_v4(address) if isinstance(address, ipaddress.IPv6Address) else None
    target = inner or address
    if any(target.version == n.version and target in n for n in allowed):
        return None
    kind = _kind(target)
    if kind is not None and inner is not None:
        return f"{kind} (it embeds {inner})"
    return kind


def _kind(address: IPAddress) -> str | None:
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_unspecified, "the unspecified address"),
        (any(address in n for n in _RFC1918), "a private (RFC 1918) address"),
        (address in _CGNAT, "a shared (CGNAT) address"),
        (address in _UNIQUE_LOCAL, "a unique-local address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private or not address.is_global, "not a globally routable address"),
    )
    return next((text for refused, text in checks if refused), None)
