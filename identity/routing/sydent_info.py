"""Importing the info.yaml of Sydent's Tchap branch into domains.yaml.

info.yaml maps exact addresses (`entries`) and then ordered regular expressions
(`patterns`, first match wins, matched against the whole address) to
`{hs, shadow_hs, requires_invite}`, usually written once as YAML anchors:

    medium:
      email:
        entries:
          jeanne.exemple@laposte.net: *interieur
        patterns:
          - .*@(.*\\.|)interieur\\.gouv\\.fr: *interieur
          - .*@ac-versailles\\.fr: *education
          - .*: *externe

Patterns of the usual shapes become domain rules; any other is reported, never
dropped silently. Because Sydent stops at the first matching pattern while our most
specific rule wins, a pattern that earlier ones already cover is left out (it never
decided anything), or narrowed to the part they leave. The result is then checked
against Sydent's own matching on probe addresses, and every difference is reported.
"""

import re
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import yaml

from identity.addresses import normalise_email
from identity.errors import MatrixError
from identity.routing.diff import PROBE_LABEL
from identity.routing.diff import UNKNOWN_DOMAIN
from identity.routing.schema import normalise_domain
from identity.routing.table import Platform
from identity.routing.table import RoutingTable
from identity.routing.table import Scope

# What may stand for "any local part" before the @.
_ANY_LOCAL = (".*", ".+", "[^@]*", "[^@]+")
# What may stand for "any domain".
_ANY_DOMAIN = (".*", ".+", "[^@]*", "[^@]+")
# Prefixes of the domain part meaning "the domain or any subdomain of it".
_TREE_PREFIXES = tuple(
    form.format(any=any_)
    for any_ in (".*", ".+", "[^@]*", "[^@]+", "[a-z0-9.-]*", "[a-z0-9.-]+")
    for form in ("({any}\\.|)", "(|{any}\\.)", "({any}\\.)?", "(?:{any}\\.|)", "(?:{any}\\.)?")
)
# Prefixes meaning "any subdomain of it".
_BELOW_PREFIXES = (".*\\.", ".+\\.", "[^@]*\\.", "[^@]+\\.", "[a-z0-9.-]+\\.")
# A regex matching one text: plain characters and escaped dots (a bare dot, which
# matches any character, is read as the dot its author meant).
_LITERAL = re.compile(r"(?:[a-z0-9_-]|\\[.+-]|\.)+")


class InfoFormatError(ValueError):
    """The file is not a Sydent info.yaml, or has no catch-all and no default was given."""


@dataclass
class Imported:
    table: RoutingTable
    # Patterns or entries that could not be expressed, with why (answers differ there).
    skipped: list[str] = field(default_factory=list)
    # Patterns left out or narrowed because earlier patterns decide (answers unchanged).
    notes: list[str] = field(default_factory=list)
    # Probe addresses on which the result answers otherwise than Sydent would.
    differences: list[str] = field(default_factory=list)

    @property
    def is_exact(self) -> bool:
        return not self.skipped and not self.differences


def import_info(text: str, *, default_server: str | None = None) -> Imported:
    """Convert the text of an info.yaml.

    :param default_server: the homeserver of unmatched addresses, when the file has no
        catch-all pattern (Sydent then answers nothing at all).
    :raises InfoFormatError: when the file is not in the info.yaml format.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InfoFormatError(f"not valid YAML: {e}") from None
    entries, patterns = _email_section(document)
    platforms = _Platforms()
    table = RoutingTable(platforms={}, default=Platform(name="", server=""))
    result = Imported(table=table)
    default: Platform | None = None
    for pattern, target in patterns:
        platform = platforms.get(target)
        if default is not None:
            result.notes.append(f"pattern {pattern}: after the catch-all, never used: left out")
            continue
        rule = parse_pattern(pattern)
        if rule is None:
            result.skipped.append(f"pattern {pattern}: not expressible as domain rules")
        elif rule == "default":
            default = platform
        else:
            _add(table, rule, platform, pattern, result)
    for address, target in entries.items():
        try:
            table.addresses[normalise_email(str(address))] = platforms.get(target)
        except MatrixError:
            result.skipped.append(f"entry {address}: not a valid email address")
    if default is None:
        if default_server is None:
            raise InfoFormatError(
                "info.yaml has no catch-all pattern (such as `.*`): give the homeserver of"
                " every other address with --default"
            )
        default = platforms.get({"hs": default_server, "requires_invite": True})
    table.default = default
    table.platforms = platforms.named()
    result.differences = _compare(entries, patterns, table)
    return result


def _email_section(document: Any) -> tuple[dict[str, dict], list[tuple[str, dict]]]:
    try:
        section = document["medium"]["email"]
    except (TypeError, KeyError):
        raise InfoFormatError("not a Sydent info.yaml: no medium.email section") from None
    entries = section.get("entries") or {}
    patterns = []
    for group in section.get("patterns") or []:
        if not isinstance(group, dict):
            raise InfoFormatError(f"patterns: expected `regex: target` items, got {group!r}")
        patterns += [(str(pattern), target) for pattern, target in group.items()]
    for where, target in [*entries.items(), *patterns]:
        if not isinstance(target, dict) or not (target.get("hs") or target.get("shadow_hs")):
            raise InfoFormatError(f"{where}: the target needs an hs")
    return entries, patterns


def parse_pattern(pattern: str) -> tuple[Scope, str] | tuple[None, str] | str | None:
    """A Sydent pattern as a rule: (scope, domain), (None, address) for one address,
    "default" for a catch-all, or None when it is none of these."""
    text = pattern.strip().removeprefix("^").removesuffix("$").lower()
    if text in _ANY_DOMAIN:
        return "default"
    local, at, domain = text.rpartition("@")
    if not at:
        return None
    if local not in _ANY_LOCAL:
        address = _literal(local) and _literal(domain)
        return (None, f"{_literal(local)}@{_literal(domain)}") if address else None
    if domain in _ANY_DOMAIN:
        return "default"
    scope = Scope.EXACT
    for prefixes, candidate in ((_TREE_PREFIXES, Scope.TREE), (_BELOW_PREFIXES, Scope.BELOW)):
        prefix = next((p for p in prefixes if domain.startswith(p)), None)
        if prefix is not None:
            scope, domain = candidate, domain[len(prefix) :]
            break
    literal = _literal(domain)
    if literal is None:
        return None
    try:
        return scope, normalise_domain(literal)
    except ValueError:
        return None


def _literal(regex: str) -> str | None:
    """The text a regex matches when it matches one text only (escaped dots), else None."""
    if not _LITERAL.fullmatch(regex):
        return None
    return re.sub(r"\\(.)", r"\1", regex)


def _add(table: RoutingTable, rule, platform: Platform, pattern: str, result: Imported) -> None:
    scope, key = rule
    if scope is None:
        if table.resolve(key).rule != "default":
            result.notes.append(f"pattern {pattern}: earlier patterns decide: left out")
        else:
            table.addresses.setdefault(key, platform)
        return
    decided_here = scope is not Scope.BELOW and _covered(table, Scope.EXACT, key)
    decided_below = scope is not Scope.EXACT and _covered(table, Scope.BELOW, key)
    if scope is Scope.TREE and decided_here != decided_below:
        scope = Scope.BELOW if decided_here else Scope.EXACT
        result.notes.append(f"pattern {pattern}: narrowed to {scope.spell(key)}")
    elif decided_here or decided_below:
        result.notes.append(f"pattern {pattern}: earlier patterns decide: left out")
        return
    table.domains[scope][key] = platform


def _covered(table: RoutingTable, scope: Scope, domain: str) -> bool:
    """Whether earlier rules decide the whole of what (scope, domain) covers."""
    if scope is Scope.EXACT:
        return table.resolve_domain(domain).rule != "default"
    tree, below = table.domains[Scope.TREE], table.domains[Scope.BELOW]
    suffix = domain
    while True:
        if suffix in tree or suffix in below:
            return True
        dot = suffix.find(".")
        if dot < 0:
            return False
        suffix = suffix[dot + 1 :]


class _Platforms:
    """One platform per distinct target, named after its homeserver."""

    def __init__(self) -> None:
        self._by_target: dict[tuple, Platform] = {}

    def get(self, target: dict) -> Platform:
        hs, shadow = target.get("hs"), target.get("shadow_hs")
        # In Sydent `hs` is the protected homeserver when a public `shadow_hs` exists.
        server, protected = (shadow, hs) if shadow and hs and shadow != hs else (hs or shadow, None)
        key = (
            str(server).lower(),
            protected and str(protected).lower(),
            bool(target.get("requires_invite", False)),
        )
        if key not in self._by_target:
            self._by_target[key] = Platform(
                name="", server=key[0], protected_server=key[1], requires_invite=key[2]
            )
        return self._by_target[key]

    def named(self) -> dict[str, Platform]:
        """Give each platform a short name, then return them by name."""
        # The names are set on the frozen instances the table already holds.
        suffix = _common_suffix([p.protected_server or p.server for p in self._by_target.values()])
        named: dict[str, Platform] = {}
        for platform in self._by_target.values():
            base = (platform.protected_server or platform.server).removesuffix(suffix) or "hs"
            name = base + ("-sur-invitation" if platform.requires_invite else "")
            while name in named:
                name += "-bis"
            object.__setattr__(platform, "name", name)
            named[name] = platform
        return named


def _common_suffix(servers: list[str]) -> str:
    """The dot-separated suffix shared by every server name, with its leading dot."""
    if len(servers) < 2:
        return ""
    reversed_labels = [s.split(".")[::-1] for s in servers]
    shared = []
    for labels in zip(*reversed_labels, strict=False):
        if len(set(labels)) != 1:
            break
        shared.append(labels[0])
    if len(shared) >= min(len(labels) for labels in reversed_labels):
        shared = shared[:-1]  # keep at least one label of each name
    return "." + ".".join(reversed(shared)) if shared else ""


def sydent_target(entries: dict, patterns: list[tuple[str, dict]], address: str) -> dict | None:
    """What Sydent's Tchap branch matches for `address` (its own rule, for comparison)."""
    if address in entries:
        return entries[address]
    for pattern, target in patterns:
        if re.match("^" + pattern + "$", address):
            return target
    return None


def _compare(entries: dict, patterns: list[tuple[str, dict]], table: RoutingTable) -> list[str]:
    differences = []
    for address in _probe_addresses(entries, patterns):
        expected = sydent_target(entries, patterns, address)
        platform = table.resolve(address).platform
        if expected is not None and _answer(expected) != _answer_of(platform):
            differences.append(
                f"{address}: Sydent says {_answer(expected)}, the import {_answer_of(platform)}"
            )
    return differences


def _probe_addresses(entries: dict, patterns: list[tuple[str, dict]]) -> list[str]:
    probes = [str(address).lower() for address in entries]
    probes.append(f"probe@{UNKNOWN_DOMAIN}")
    for pattern, _ in patterns:
        rule = parse_pattern(pattern)
        if isinstance(rule, tuple) and rule[0] is None:
            probes.append(rule[1])
        elif isinstance(rule, tuple):
            probes += [f"probe@{rule[1]}", f"probe@{PROBE_LABEL}.{rule[1]}"]
    return list(dict.fromkeys(probes))


def _answer(target: dict) -> tuple:
    return _answer_of(_Platforms().get(target))


def _answer_of(platform: Platform) -> tuple:
    return (platform.server, platform.protected_server, platform.requires_invite)


def to_yaml(imported: Imported, *, source: str) -> str:
    """The domains.yaml text of an import, with a header saying where it comes from."""
    table = imported.table
    document = {
        "platforms": {
            name: {
                "server": p.server,
                **({"protected_server": p.protected_server} if p.protected_server else {}),
                **({"requires_invite": True} if p.requires_invite else {}),
            }
            for name, p in table.platforms.items()
        },
        "default": table.default.name,
        "domains": {rule: p.name for rule, p in table.rules() if "@" not in rule},
        "addresses": dict(sorted((a, p.name) for a, p in table.addresses.items())),
    }
    header = (
        f"# domains.yaml imported from {source} by `flask domains import-info`.\n"
        "# The format is explained in docs/domains.md.\n\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
