"""The import graph of identity/ and app.py: no cycle, and no arrow from a lower layer to
a higher one (docs/architecture.md, "Layers"). Every import counts: those at the top,
inside functions and under `if TYPE_CHECKING`."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Lowest first: a module may import its own layer and those below it, never above.
LAYERS = ("kernel", "storage", "edges", "domain", "presentation", "services", "delivery", "wiring")

# Module (or package prefix, ending in ".") → layer. The longest match wins.
LAYER_OF = {
    "identity": "kernel",
    "identity.errors": "kernel",
    "identity.clock": "kernel",
    "identity.config": "kernel",
    "identity.dates": "kernel",
    "identity.i18n": "kernel",
    "identity.logs": "kernel",
    "identity.outages": "kernel",
    "identity.idle": "kernel",
    "identity.extensions": "kernel",
    "identity.brands": "kernel",
    "identity.metrics": "kernel",
    "identity.addresses": "kernel",
    "identity.matrix_ids": "kernel",
    "identity.storage": "storage",
    "identity.storage.": "storage",
    "identity.schema_upgrade": "storage",
    "identity.mailer": "edges",
    "identity.keys": "edges",
    "identity.limits": "edges",
    "identity.terms": "edges",
    "identity.federation": "edges",
    "identity.federation.": "edges",
    "identity.routing": "edges",
    "identity.routing.source": "edges",
    "identity.routing.schema": "edges",
    "identity.routing.table": "edges",
    "identity.routing.answers": "domain",
    "identity.routing.diff": "domain",
    "identity.routing.sydent_info": "domain",
    "identity.validation": "domain",
    "identity.binding": "domain",
    "identity.lookup": "domain",
    "identity.invitations": "domain",
    "identity.accounts": "domain",
    "identity.deliveries": "domain",
    "identity.reminders": "domain",
    "identity.landing": "domain",
    "identity.abuse": "domain",
    "identity.refusals": "domain",
    "identity.retention": "domain",
    "identity.peers": "domain",
    "identity.health": "domain",
    "identity.security_txt": "domain",
    "identity.sydent_import": "domain",
    "identity.presentation": "presentation",
    "identity.headers": "presentation",
    "identity.services": "services",
    "identity.api": "delivery",
    "identity.api.": "delivery",
    "identity.cli": "delivery",
    "identity.cli.": "delivery",
    "identity.pages": "delivery",
    "identity.worker": "delivery",
    "identity.wsgi": "delivery",
    "identity.http_worker": "delivery",
    "app": "wiring",
}

# Where Flask's request-bound globals may be read: delivery, i18n (the request's
# language), logging (the request id), the hot-read cache (its per-app connections),
# and services.py's accessor (which app's services).
REQUEST_GLOBALS = {"current_app", "g", "request", "session"}
MAY_READ_REQUEST_GLOBALS = {
    "identity.i18n",
    "identity.logs",
    "identity.storage.hot_reads",
    "identity.services",
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted((ROOT / "identity").rglob("*.py")) + [ROOT / "app.py"]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    if module in LAYER_OF:
        return LAYER_OF[module]
    prefixes = [p for p in LAYER_OF if p.endswith(".") and module.startswith(p)]
    if not prefixes:
        raise AssertionError(f"{module} has no layer: add it to LAYER_OF and the docs")
    return LAYER_OF[max(prefixes, key=len)]


def _ours(name: str) -> str | None:
    """The module of ours `name` is, or lies in (a name imported from a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every module of ours that `module` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _ours(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        assert _layer(module) in LAYERS


def test_no_import_points_up():
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    ]
    assert upward == []


def test_no_import_cycle():
    # Tarjan's strongly connected components: any with two modules or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _layer(m) in ("kernel", "storage", "edges", "domain"))
)
def test_lower_layers_never_import_services_or_views(module):
    forbidden = {
        m for m in GRAPH[module] if _layer(m) in ("services", "delivery", "wiring", "presentation")
    }
    assert forbidden == set()


def test_request_globals_are_read_only_where_they_belong():
    readers = []
    for module, path in MODULES.items():
        if _layer(module) in ("delivery", "wiring") or module in MAY_READ_REQUEST_GLOBALS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "flask":
                used = {alias.name for alias in node.names} & REQUEST_GLOBALS
                if used:
                    readers.append(f"{module}: {', '.join(sorted(used))}")
    assert readers == []


def test_domain_modules_never_import_flask():
    importers = []
    for module, path in MODULES.items():
        if _layer(module) != "domain":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name == "flask" or name.startswith("flask.") for name in names):
                importers.append(module)
    assert importers == []


def test_domain_modules_load_without_the_services(tmp_path):
    """Importing the domain never loads identity.services (a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import identity.binding, identity.invitations, identity.validation,"
        " identity.routing.table, sys; assert 'identity.services' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_domain_modules_never_commit():
    """Only callers end transactions: the domain never reaches for the session itself
    (a function that must commit midway takes a `commit` callable)."""
    assert [m for m in MODULES if _layer(m) == "domain" and "identity.extensions" in GRAPH[m]] == []
