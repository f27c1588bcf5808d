"""The Identity Service API's request schemas, assembled from the specification's files.

The specification splits its OpenAPI 3.1 description per endpoint family, with `$ref`s
between files (tests/fixtures/matrix-spec). This module loads every file, resolves the
references and returns, per endpoint path (``/store-invite``) and method, the JSON
Schema of the request body; `strategy_for` turns one into a Hypothesis strategy.
"""

import functools
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

SPEC_DIR = Path(__file__).parent / "fixtures" / "matrix-spec" / "data" / "api" / "identity"
# OpenAPI annotations that are not JSON Schema validation keywords.
_ANNOTATIONS = {
    "example",
    "examples",
    "description",
    "title",
    "x-addedInMatrixVersion",
    "x-changedInMatrixVersion",
}
# JSON Schema formats that hypothesis-jsonschema knows; the spec's own (mx-user-id…)
# are dropped and their `pattern` kept.
_KNOWN_FORMATS = {"email", "uri", "date-time", "ipv4", "ipv6", "hostname"}


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _resolve(node: Any, base: Path) -> Any:
    """Inline every `$ref` (relative file, optional #/pointer), recursively."""
    if isinstance(node, list):
        return [_resolve(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        path = (base / target).resolve() if target else None
        document = _load(path) if path else node
        for part in filter(None, pointer.split("/")):
            document = document[part]
        return _resolve(document, path.parent if path else base)
    resolved = {}
    for key, value in node.items():
        if key in _ANNOTATIONS and not isinstance(value, dict):
            continue
        if key == "format" and value not in _KNOWN_FORMATS:
            continue
        if key == "properties":
            resolved[key] = {name: _resolve(v, base) for name, v in value.items()}
        elif key in _ANNOTATIONS:
            continue
        else:
            resolved[key] = _resolve(value, base)
    return resolved


@functools.cache
def request_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """{(method, path): JSON Schema of the JSON request body} for every endpoint."""
    schemas = {}
    for file in sorted(SPEC_DIR.glob("*.yaml")):
        document = _load(file)
        for path, operations in (document.get("paths") or {}).items():
            for method, operation in operations.items():
                body = (operation.get("requestBody") or {}).get("content", {})
                schema = body.get("application/json", {}).get("schema")
                if schema is not None:
                    schemas[(method.upper(), path)] = _resolve(schema, file.parent)
    return schemas


def strategy_for(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid against one of the specification's (simple) request schemas.

    The spec's request bodies use only `type`, `properties`, `required`, `items`,
    `pattern` and the formats kept above; that is all this understands.
    """
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {name: strategy_for(sub) for name, sub in properties.items() if name in required},
            optional={
                name: strategy_for(sub) for name, sub in properties.items() if name not in required
            },
        )
    if kind == "array":
        return st.lists(strategy_for(schema.get("items", {})), max_size=4)
    if kind == "integer":
        return st.integers()
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"])
        if schema.get("format") == "email":
            return st.emails()
        if schema.get("format") == "uri":
            return st.builds(
                lambda host, path: f"https://{host}/{path}",
                st.sampled_from(["www.tchap.gouv.fr", "example.fr", "a.example:8443"]),
                st.text(alphabet="abc/?=&%#", max_size=10),
            )
        return st.text(max_size=30)
    return st.nothing()
