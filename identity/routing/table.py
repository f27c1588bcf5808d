"""The routing table: which platform (homeserver) an email address belongs to.

Resolution never scans rules: the domain is looked up label by label in hash tables,
from the full domain up to its top-level domain, so its cost grows with the number
of labels in the address, not with the number of rules.
"""

from dataclasses import dataclass
from dataclasses import field
from enum import Enum
from functools import cached_property

# Domains whose resolution a sealed table remembers: every administration's, with room
# to spare; beyond it (a stream of made-up domains), resolving costs what it did.
MEMO_SIZE = 4096


class Scope(Enum):
    """How far a domain rule reaches; each has its own spelling in domains.yaml."""

    EXACT = ""  # ac-versailles.fr: this domain only
    TREE = "."  # .interieur.gouv.fr: this domain and all its subdomains
    BELOW = "*."  # *.gouv.fr: the subdomains only

    def spell(self, domain: str) -> str:
        return self.value + domain


@dataclass(frozen=True)
class Platform:
    """A homeserver people register on, as declared in domains.yaml.

    A protected platform is reached only from trusted networks (`protected_server`);
    `server` is then its public twin, the "shadow" homeserver everyone else is given.
    """

    name: str
    server: str
    protected_server: str | None = None
    requires_invite: bool = False

    @cached_property
    def servers(self) -> frozenset[str]:
        return frozenset(filter(None, (self.server, self.protected_server)))


@dataclass(frozen=True)
class Match:
    platform: Platform
    # The rule that decided, spelt as in domains.yaml: "ac-versailles.fr", "default", …
    rule: str


@dataclass
class RoutingTable:
    platforms: dict[str, Platform]
    default: Platform
    # {scope: {ASCII domain: platform}} and {normalised address: platform}.
    domains: dict[Scope, dict[str, Platform]] = field(
        default_factory=lambda: {scope: {} for scope in Scope}
    )
    addresses: dict[str, Platform] = field(default_factory=dict)
    # Set by `seal`: {domain: its match}.
    _memo: dict[str, Match] | None = field(default=None, init=False, repr=False, compare=False)

    def seal(self) -> "RoutingTable":
        """Declare the table complete: from now on, each domain's match is remembered
        (clients ask /info before every login). Never seal a table still being built:
        a rule added after a domain was resolved would not be seen."""
        self._memo = {}
        return self

    def resolve(self, address: str) -> Match:
        """The platform of a normalised address (see `identity.addresses`).

        An exact address wins, then the most specific domain rule, then the default.
        """
        platform = self.addresses.get(address)
        if platform is not None:
            return Match(platform, address)
        domain = address.rpartition("@")[2]
        return self.resolve_domain(domain)

    def resolve_domain(self, domain: str) -> Match:
        memo = self._memo
        if memo is None:
            return self._resolve_domain(domain)
        match = memo.get(domain)
        if match is None:
            match = self._resolve_domain(domain)
            if len(memo) < MEMO_SIZE:
                memo[domain] = match
        return match

    def _resolve_domain(self, domain: str) -> Match:
        domains = self.domains
        exact, tree, below = domains[Scope.EXACT], domains[Scope.TREE], domains[Scope.BELOW]
        if (platform := exact.get(domain)) is not None:
            return Match(platform, domain)
        suffix, is_parent = domain, False
        while True:
            if (platform := tree.get(suffix)) is not None:
                return Match(platform, Scope.TREE.spell(suffix))
            if is_parent and (platform := below.get(suffix)) is not None:
                return Match(platform, Scope.BELOW.spell(suffix))
            dot = suffix.find(".")
            if dot < 0:
                return Match(self.default, "default")
            suffix, is_parent = suffix[dot + 1 :], True

    def rule_count(self) -> int:
        return len(self.addresses) + sum(len(rules) for rules in self.domains.values())

    def rules(self) -> list[tuple[str, Platform]]:
        """Every rule as (spelling, platform), domains first."""
        spelt = [
            (scope.spell(domain), platform)
            for scope, rules in self.domains.items()
            for domain, platform in rules.items()
        ]
        return spelt + list(self.addresses.items())
