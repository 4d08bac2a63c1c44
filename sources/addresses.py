"""Which IP addresses the fetch stage may connect to (`fetch.block_private_addresses`): globally routable
ones only, and an IPv6 address that carries an IPv4 address is judged by that IPv4 address too.

Python's `is_global` alone is not enough. It calls 64:ff9b::a00:1 (NAT64 of 10.0.0.1),
2002:a9fe:a9fe:: (6to4 of 169.254.169.254), ::a00:1 (IPv4-compatible) and ::ffff:0:a00:1
(IPv4-translated) global, yet behind a NAT64 gateway or a 6to4 relay they reach the private IPv4 address
inside them. So every IPv6 format that embeds an IPv4 address is decoded and the IPv4 address gets the
same rule; local-use NAT64 (64:ff9b:1::/48, RFC 8215) is refused whole, since its translator maps it as
its operator chose. `sources.netguard` applies this to every address a connection could go to: URL
literals in any spelling and whatever DNS answers, on every redirect hop.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
#: (name, network) of the IPv6 formats whose low 32 bits are an IPv4 address the packet reaches.
LOW32_FORMATS = (
    ("IPv4-mapped", IPv6Network("::ffff:0:0/96")),
    ("IPv4-translated", IPv6Network("::ffff:0:0:0/96")),
    ("IPv4-compatible", IPv6Network("::/96")),
    ("NAT64", IPv6Network("64:ff9b::/96")),
)
SIX_TO_FOUR = IPv6Network("2002::/16")
TEREDO = IPv6Network("2001::/32")
SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT: not global, though not "private" either


class BlockedAddress(ValueError):
    """A URL (or a redirect) whose host is, or resolves to, an address fetch must not connect to."""


def embedded_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses inside `ip`, each with the name of the format that carries it: the low 32 bits
    of mapped/translated/compatible/NAT64 addresses, bits 16-47 of 6to4, Teredo's server and its client
    (stored inverted in the low 32 bits), and ISATAP's interface id (::0:5efe:a.b.c.d or ::200:5efe:...)
    under any prefix."""
    low32 = IPv4Address(int(ip) & 0xFFFF_FFFF)
    found = [(name, low32) for name, net in LOW32_FORMATS if ip in net]
    if ip in SIX_TO_FOUR and ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip in TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    if (int(ip) >> 32) & 0xFDFF_FFFF == 0x0000_5EFE:
        found.append(("ISATAP", low32))
    return found


def _own_refusal(ip: IPv4Address | IPv6Address) -> str | None:
    """Why `ip` itself (not what it embeds) is not a public unicast address, or None."""
    kinds = (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("unspecified", ip.is_unspecified),
             ("multicast", ip.is_multicast), ("private", ip.is_private), ("reserved", ip.is_reserved),
             ("site-local", isinstance(ip, IPv6Address) and ip.is_site_local),
             ("shared address space", isinstance(ip, IPv4Address) and ip in SHARED))
    for kind, hit in kinds:
        if hit:
            return kind
    return None if ip.is_global else "not globally routable"


def refusal(ip: IPv4Address | IPv6Address) -> str | None:
    """Why fetch must not connect to `ip` (loopback, private, link-local, ..., or an IPv6 form of such an
    IPv4 address), or None for a public unicast address. A translation format (NAT64, 6to4, Teredo,
    mapped, ...) of a public IPv4 address is public: in a DNS64 network every IPv4-only host resolves to
    64:ff9b::/96. ISATAP's interface id can sit under any prefix, so there the prefix is judged too."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            ip = IPv6Address(str(ip).split("%")[0])
        if ip.is_loopback or ip.is_unspecified:  # ::1 and :: are also in ::/96
            return _own_refusal(ip)
        found = embedded_ipv4(ip)
        for name, inner in found:
            why = _own_refusal(inner)
            if why:
                return f"{name} form of {inner}, {why}"
        if ip in NAT64_LOCAL:
            return "local-use NAT64 prefix 64:ff9b:1::/48"
        if any(name != "ISATAP" for name, _ in found):
            return None  # a translation format: where it goes is the IPv4 address, judged above
    return _own_refusal(ip)


def check_public(host: str, addresses: list[str]) -> None:
    """Raise BlockedAddress when any address `host` resolved to is refused: one private answer among
    public ones is refused too, as the connection could fall back to it."""
    for text in addresses:
        ip = ip_address(text.split("%")[0])
        why = refusal(ip)
        if why:
            raise BlockedAddress(f"{host} resolves to non-public address {ip} ({why}; "
                                 "fetch.block_private_addresses)")
