"""Reading domains.yaml into a RoutingTable, refusing anything doubtful.

The format is described in the header of domains.yaml and in docs/domains.md. Every
problem is reported with the rule (and line) it comes from, and all of them at once,
so that an admin fixes a broken edit in one go.
"""

import re
from typing import Any

import idna
import yaml

from identity.addresses import normalise_email
from identity.errors import MatrixError
from identity.matrix_ids import is_server_name
from identity.routing.table import Platform
from identity.routing.table import RoutingTable
from identity.routing.table import Scope

TOP_LEVEL_KEYS = ("platforms", "default", "domains", "addresses")
PLATFORM_KEYS = ("server", "protected_server", "requires_invite")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class RoutingError(ValueError):
    """domains.yaml is invalid; `problems` lists every reason, each naming its rule."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def load_file(path: str) -> RoutingTable:
    """:raises RoutingError: when the file cannot be read or is invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RoutingError(path, [f"cannot read the file: {e.strerror}"]) from None
    return load_text(text, source=path)


def load_text(text: str, *, source: str = "domains.yaml") -> RoutingTable:
    """:raises RoutingError: listing every problem found."""
    loader = _StrictLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as e:
        raise RoutingError(source, [_yaml_problem(e)]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise RoutingError(source, loader.duplicates)
    return _Builder(source, loader.lines).build(document)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that reports duplicate keys (PyYAML keeps the last one silently)
    and remembers the line of each key, for error messages."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self.lines: dict[str, int] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str):
                self.lines.setdefault(key, line)
            try:
                if key in seen:
                    self.duplicates.append(
                        f"{key!r} (line {line}) appears twice in one mapping"
                        f" (first on line {seen[key]})"
                    )
                seen.setdefault(key, line)
            except TypeError:
                pass  # an unhashable key: construct_mapping below reports it
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}not valid YAML ({getattr(e, 'problem', None) or e})"


class _Builder:
    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[str] = []

    def build(self, document: Any) -> RoutingTable:
        if not isinstance(document, dict):
            raise RoutingError(self.source, ["the file must be a mapping with a `platforms` key"])
        for key in document:
            if key not in TOP_LEVEL_KEYS:
                self.problem(key, f"unknown key {key!r} (expected {', '.join(TOP_LEVEL_KEYS)})")
        platforms = self.platforms(document.get("platforms"))
        default = self.default(document.get("default"), platforms)
        table = RoutingTable(platforms=platforms, default=default or _PLACEHOLDER)
        self.domains(document.get("domains") or {}, table)
        self.addresses(document.get("addresses") or {}, table)
        if self.problems:
            raise RoutingError(self.source, self.problems)
        return table.seal()

    def problem(self, rule: Any, message: str) -> None:
        line = self.lines.get(rule) if isinstance(rule, str) else None
        where = f" (line {line})" if line else ""
        self.problems.append(f"{rule}{where}: {message}")

    def platforms(self, raw: Any) -> dict[str, Platform]:
        if not isinstance(raw, dict) or not raw:
            self.problems.append("platforms: declare at least one platform")
            return {}
        platforms = {}
        for name, spec in raw.items():
            if platform := self.platform(str(name), spec):
                platforms[platform.name] = platform
        return platforms

    def platform(self, name: str, spec: Any) -> Platform | None:
        if not isinstance(spec, dict):
            self.problem(name, "a platform is a mapping with at least `server`")
            return None
        for key in spec:
            if key not in PLATFORM_KEYS:
                self.problem(name, f"unknown key {key!r} (expected {', '.join(PLATFORM_KEYS)})")
        servers = [spec.get("server"), spec.get("protected_server")]
        for key, server in zip(("server", "protected_server"), servers, strict=True):
            if server is not None and not _is_server_name(server):
                self.problem(name, f"{key} {server!r} is not a server name")
        if spec.get("server") is None:
            self.problem(name, "`server` is missing")
            return None
        requires_invite = spec.get("requires_invite", False)
        if not isinstance(requires_invite, bool):
            self.problem(name, "requires_invite must be true or false")
        return Platform(
            name=name,
            server=str(spec["server"]).lower(),
            protected_server=str(servers[1]).lower() if servers[1] is not None else None,
            requires_invite=requires_invite is True,
        )

    def default(self, name: Any, platforms: dict[str, Platform]) -> Platform | None:
        if name is None:
            self.problems.append("default: missing (the platform of every other address)")
            return None
        if name not in platforms:
            self.problem("default", f"platform {name!r} is not declared under `platforms`")
            return None
        return platforms[name]

    def domains(self, raw: Any, table: RoutingTable) -> None:
        if not isinstance(raw, dict):
            self.problems.append("domains: must map domains to platform names")
            return
        for rule, name in raw.items():
            platform = self.target(rule, name, table)
            try:
                scope, domain = parse_domain_rule(str(rule))
            except ValueError as e:
                self.problem(rule, str(e))
                continue
            if platform is None:
                continue
            if clash := _clash(table, scope, domain):
                self.problem(rule, f"conflicts with {clash}: both cover {domain}")
                continue
            table.domains[scope][domain] = platform

    def addresses(self, raw: Any, table: RoutingTable) -> None:
        if not isinstance(raw, dict):
            self.problems.append("addresses: must map addresses to platform names")
            return
        for rule, name in raw.items():
            platform = self.target(rule, name, table)
            try:
                address = normalise_email(str(rule))
            except MatrixError:
                self.problem(rule, "not a valid email address")
                continue
            if address in table.addresses:
                self.problem(rule, f"conflicts with another spelling of {address}")
            elif platform is not None:
                table.addresses[address] = platform

    def target(self, rule: Any, name: Any, table: RoutingTable) -> Platform | None:
        if name not in table.platforms:
            self.problem(rule, f"platform {name!r} is not declared under `platforms`")
            return None
        return table.platforms[name]


# Stands in for a missing default while the other problems are collected.
_PLACEHOLDER = Platform(name="", server="")


def parse_domain_rule(rule: str) -> tuple[Scope, str]:
    """``.interieur.gouv.fr`` → (TREE, "interieur.gouv.fr"); Unicode becomes punycode.

    :raises ValueError: naming what is wrong with the domain.
    """
    text = rule.strip().lower()
    scope = Scope.EXACT
    for candidate in (Scope.BELOW, Scope.TREE):
        if text.startswith(candidate.value):
            scope, text = candidate, text[len(candidate.value) :]
            break
    return scope, normalise_domain(text)


def normalise_domain(domain: str) -> str:
    """The ASCII (punycode) form of a domain; :raises ValueError: when malformed."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise ValueError(f"{domain!r} is not a valid internationalised domain") from None
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{domain!r} is not a valid domain name")
    return domain


def _is_server_name(value: Any) -> bool:
    return isinstance(value, str) and is_server_name(value)


def _clash(table: RoutingTable, scope: Scope, domain: str) -> str | None:
    """The rule already in `table` that covers part of what (scope, domain) covers at the
    same level; rules at different levels do not clash, the more specific one wins."""
    overlapping = {
        Scope.EXACT: (Scope.EXACT, Scope.TREE),
        Scope.TREE: (Scope.EXACT, Scope.TREE, Scope.BELOW),
        Scope.BELOW: (Scope.TREE, Scope.BELOW),
    }[scope]
    for other in overlapping:
        if domain in table.domains[other]:
            return other.spell(domain)
    return None
