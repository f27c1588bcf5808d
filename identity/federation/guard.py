"""Which addresses an outbound call may reach: only globally reachable ones.

The ranges below are the IANA special-purpose address registries for IPv4 and IPv6
(iana-ipv4-special-registry, iana-ipv6-special-registry) whose "Globally Reachable" is
False or N/A, plus multicast, the reserved remainder of the address spaces and the
deprecated ranges. They are listed here rather than taken from `ipaddress.is_global`,
whose tables change between Python releases.

An IPv6 address can carry an IPv4 address that a translator, tunnel or dual-stack
socket turns into the real destination (NAT64 `64:ff9b::a9fe:a9fe` is 169.254.169.254).
Every IPv4 address embedded in an IPv6 address is judged as well as the IPv6 address:
NAT64 (the well-known prefix is globally reachable, so a public IPv4 address behind it
is allowed: that is how an IPv6-only host reaches IPv4-only homeservers), 6to4 and
ISATAP likewise; IPv4-compatible, IPv4-translated, Teredo and local-use NAT64 are
ranges that are not globally reachable, so they stay closed whatever they carry unless
allowlisted, and even then what they carry is judged. In the local-use NAT64 block the
operator chooses the prefix length, so the IPv4 address is read at every position RFC
6052 allows and each reading is judged.
"""

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

# Not globally reachable IPv4 (IANA IPv4 special-purpose registry, RFC 6890 and updates).
REFUSED_IPV4: tuple[V4, ...] = tuple(
    V4(n)
    for n in (
        "0.0.0.0/8",  # "this network" (RFC 791), 0.0.0.0/32 "this host"
        "10.0.0.0/8",  # private use (RFC 1918)
        "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link local, cloud metadata services (RFC 3927)
        "172.16.0.0/12",  # private use (RFC 1918)
        # IETF protocol assignments (RFC 6890): DS-Lite 192.0.0.0/29, IPv4 dummy
        # 192.0.0.8/32, PCP and TURN anycast 192.0.0.9-10, NAT64/DNS64 discovery
        # 192.0.0.170-171; none of them is a homeserver, so the whole /24 is refused.
        "192.0.0.0/24",
        "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
        "192.31.196.0/24",  # AS112-v4 (RFC 7535): sinks for reverse DNS, no homeserver
        "192.52.193.0/24",  # AMT (RFC 7450): multicast tunnelling relays
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526), 6a44 (RFC 6751)
        "192.168.0.0/16",  # private use (RFC 1918)
        "192.175.48.0/24",  # direct delegation AS112 service (RFC 7534)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # documentation TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved (RFC 1112), 255.255.255.255/32 limited broadcast
    )
)

# Not globally reachable IPv6 (IANA IPv6 special-purpose registry, RFC 6890 and updates),
# and what the IPv6 address space registry leaves reserved or deprecated.
REFUSED_IPV6: tuple[V6, ...] = tuple(
    V6(n)
    for n in (
        "::/96",  # unspecified ::/128, loopback ::1/128, IPv4-compatible (RFC 4291, deprecated)
        "::ffff:0:0/96",  # IPv4-mapped (RFC 4291): judged by its IPv4 address only
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT, RFC 2765)
        "::/8",  # the rest of the reserved 0000::/8 block
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "100:0:0:1::/64",  # dummy IPv6 prefix (RFC 9780)
        "100::/8",  # the rest of the reserved 0100::/8 block
        # IETF protocol assignments (RFC 2928): Teredo 2001::/32, benchmarking
        # 2001:2::/48, ORCHID 2001:10::/28 and ORCHIDv2 2001:20::/28, AMT 2001:3::/32,
        # anycast services 2001:1::/48, AS112 2001:4:112::/48, drone remote ID
        # 2001:30::/28; none of them is a homeserver, so the whole /23 is refused.
        "2001::/23",
        "2001:db8::/32",  # documentation (RFC 3849)
        "2620:4f:8000::/48",  # direct delegation AS112 service (RFC 7534)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs (RFC 9602)
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link local (RFC 4291)
        "fec0::/10",  # site local, deprecated (RFC 3879)
        "ff00::/8",  # multicast (RFC 4291)
    )
)

# Only global unicast (2000::/3) is allocated for the Internet; the rest is reserved.
GLOBAL_UNICAST_IPV6 = V6("2000::/3")
# Prefixes that carry an IPv4 address (RFC 6052 for NAT64, RFC 3056, RFC 4380).
NAT64_WELL_KNOWN = V6("64:ff9b::/96")
NAT64_LOCAL_USE = V6("64:ff9b:1::/48")
SIX_TO_FOUR = V6("2002::/16")
TEREDO = V6("2001::/32")
IPV4_MAPPED = V6("::ffff:0:0/96")
IPV4_COMPATIBLE = V6("::/96")
IPV4_TRANSLATED = V6("::ffff:0:0:0/96")
# ISATAP interface identifiers (RFC 5214): ::0:5efe:a.b.c.d and ::200:5efe:a.b.c.d.
_ISATAP_IDS = (0x00005EFE, 0x02005EFE)
_LOW32 = 0xFFFFFFFF


def _v4(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value & _LOW32)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address that `address` carries and a translator or tunnel would reach."""
    value = int(address)
    found = []
    if address in IPV4_MAPPED or address in IPV4_COMPATIBLE or address in IPV4_TRANSLATED:
        found.append(_v4(value))
    if address in NAT64_WELL_KNOWN:
        found.append(_v4(value))
    if address in NAT64_LOCAL_USE:
        # RFC 6052 section 2.2: the operator chooses the prefix length (/48 to /96 fit in
        # this block) and bits 64-71 are skipped; judge every position it may use.
        found.append(_v4(((value >> 64) & 0xFFFF) << 16 | ((value >> 40) & 0xFFFF)))  # /48
        found.append(_v4(((value >> 64) & 0xFF) << 24 | ((value >> 32) & 0xFFFFFF)))  # /56
        found.append(_v4(value >> 24))  # /64
        found.append(_v4(value))  # /96
    if address in SIX_TO_FOUR:
        found.append(_v4(value >> 80))
    if address in TEREDO:
        found.append(_v4(value >> 64))  # the Teredo server
        found.append(_v4(~value))  # the client, bits inverted (RFC 4380 section 4)
    if (value >> 32) & _LOW32 in _ISATAP_IDS:
        found.append(_v4(value))
    return found


def is_reserved(address: IPAddress) -> bool:
    """Whether `address` (one address, not what it embeds) is not globally reachable."""
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in REFUSED_IPV4)
    if address in NAT64_WELL_KNOWN:
        return False  # globally reachable (RFC 6052); the IPv4 address inside is judged
    if address not in GLOBAL_UNICAST_IPV6:
        return True
    return any(address in net for net in REFUSED_IPV6)


def _listed(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def allows(
    address: IPAddress, *, allowlist: Iterable[Network] = (), blocklist: Iterable[Network] = ()
) -> bool:
    """Whether we may connect to `address`.

    The address must be globally reachable or allowlisted, and not blocklisted. An
    IPv4-mapped address is its IPv4 address (a dual-stack socket connects to exactly
    that). Each IPv4 address embedded in an IPv6 address must be globally reachable and
    not blocklisted; an allowlisted IPv4 network is reached through a translator or
    tunnel only when the IPv6 address is allowlisted too (`64:ff9b::/96` beside
    `10.20.0.0/16`), so that opening 127.0.0.1 for a local homeserver never opens a
    NAT64 gateway's own loopback.
    """
    allowlist, blocklist = tuple(allowlist), tuple(blocklist)
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # drop any %zone
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    if _listed(address, blocklist):
        return False
    opened = _listed(address, allowlist)
    if is_reserved(address) and not opened:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    for carried in embedded_ipv4(address):
        if _listed(carried, blocklist):
            return False
        if is_reserved(carried) and not (opened and _listed(carried, allowlist)):
            return False
    return True
