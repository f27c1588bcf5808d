"""Matrix identifiers: server names and user IDs, as the specification's appendices
write them. One grammar, used by the accounts, the routing rules and the federation
resolver alike."""

import ipaddress
import re

# Appendices, "Server Name": IPv6 literals and DNS names (IPv4 literals included).
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_DNS_CHARS = re.compile(r"[0-9A-Za-z.-]{1,255}")
_USER_ID = re.compile(r"^@[^:\s]+:(.+)$")


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 literals in brackets).

    The host is a DNS name, an IPv4 literal or a bracketed IPv6 literal as the appendices
    define a server name: nothing else (no IPv6 zone, no space or control character)
    reaches the system resolver or a Host header.

    :raises ValueError: when the name is malformed.
    """
    if server_name.startswith("["):
        host, bracket, rest = server_name[1:].partition("]")
        if not bracket or not _IPV6_CHARS.fullmatch(host):
            raise ValueError(f"bad server name {server_name!r}")
        ipaddress.IPv6Address(host)
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"bad server name {server_name!r}")
    else:
        host, colon, port = server_name.partition(":")
        port = port if colon else None
        if host and not _DNS_CHARS.fullmatch(host):
            raise ValueError(f"bad server name {server_name!r}")
    if not host:
        raise ValueError(f"bad server name {server_name!r}")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in server name {server_name!r}")
    return host, int(port) if port else None


def is_server_name(name: str) -> bool:
    """Whether `name` is a server name (``host[:port]``) as the appendices define it."""
    try:
        split_server_name(name)
    except ValueError:
        return False
    return True


def server_of(user_id: str) -> str | None:
    """The server part of a Matrix user ID, or None when it is not one."""
    match = _USER_ID.match(user_id)
    return match.group(1) if match and is_server_name(match.group(1)) else None
