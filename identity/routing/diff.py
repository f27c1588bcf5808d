"""What an edit of domains.yaml changes: which rules move, and whose bindings move."""

from collections.abc import Iterable
from dataclasses import dataclass

from identity.routing.table import Platform
from identity.routing.table import RoutingTable
from identity.routing.table import Scope

# A label no real rule names, to stand for "any subdomain" when probing a rule.
PROBE_LABEL = "xn--sous-domaine-sonde"
UNKNOWN_DOMAIN = "domaine-inconnu.invalid"


@dataclass(frozen=True)
class Change:
    rule: str  # as spelt in domains.yaml, or "default"
    old: Platform
    new: Platform


def rule_changes(old: RoutingTable, new: RoutingTable) -> list[Change]:
    """Every rule of either version whose addresses get another homeserver."""
    changes: dict[str, Change] = {}
    for rule, address in _probes(old) + _probes(new):
        before, after = old.resolve(address).platform, new.resolve(address).platform
        if not same_homeserver(before, after):
            changes.setdefault(rule, Change(rule, before, after))
    return sorted(changes.values(), key=lambda change: change.rule)


def moved_addresses(old: RoutingTable, new: RoutingTable, addresses: Iterable[str]) -> int:
    """How many of `addresses` (the bound ones) the edit sends to another homeserver."""
    return sum(
        not same_homeserver(old.resolve(a).platform, new.resolve(a).platform) for a in addresses
    )


def same_homeserver(a: Platform, b: Platform) -> bool:
    """Whether two platforms give the same answers (their short names may differ)."""
    return (a.server, a.protected_server, a.requires_invite) == (
        b.server,
        b.protected_server,
        b.requires_invite,
    )


def _probes(table: RoutingTable) -> list[tuple[str, str]]:
    """(rule, an address it decides) for every rule, and one for the default."""
    probes = [("default", f"probe@{UNKNOWN_DOMAIN}")]
    for scope, rules in table.domains.items():
        for domain in rules:
            if scope is not Scope.BELOW:
                probes.append((scope.spell(domain), f"probe@{domain}"))
            if scope is not Scope.EXACT:
                probes.append((scope.spell(domain), f"probe@{PROBE_LABEL}.{domain}"))
    probes += [(address, address) for address in table.addresses]
    return probes
