"""Terms of service, read from a YAML file in the format Sydent deployments have.

```yaml
master_version: "2026-01"
docs:
  privacy_notice:
    version: "1.0"
    langs:
      fr: {name: "Politique de confidentialité", url: "https://…/confidentialite-fr.html"}
      en: {name: "Privacy notice", url: "https://…/privacy-en.html"}
```
A user has agreed once, for every document, they accepted its URL in some language.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from identity.config import ConfigError


@dataclass(frozen=True)
class Terms:
    # {doc name: {"version": …, lang: {"name": …, "url": …}}}, as GET /terms shows it.
    policies: dict[str, dict[str, Any]]

    @property
    def required(self) -> bool:
        return bool(self.policies)

    def urls(self) -> set[str]:
        return {lang["url"] for doc in self.policies.values() for lang in _langs(doc)}

    def is_satisfied_by(self, accepted: Iterable[str]) -> bool:
        accepted = set(accepted)
        return all(
            any(lang["url"] in accepted for lang in _langs(doc)) for doc in self.policies.values()
        )


NO_TERMS = Terms(policies={})


def _langs(doc: dict[str, Any]) -> list[dict[str, str]]:
    return [value for key, value in doc.items() if key != "version"]


def build(path: str | None) -> Terms:
    """The terms at TERMS_PATH, or none when it is empty."""
    return load(path) if path else NO_TERMS


def load(path: str) -> Terms:
    """Read and check a terms file.

    :raises ConfigError: naming TERMS_PATH and what is wrong.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"TERMS_PATH: cannot read {path}: {e}") from None
    return parse(raw)


def parse(raw: Any) -> Terms:
    if not isinstance(raw, dict) or not isinstance(raw.get("master_version"), str):
        raise ConfigError("TERMS_PATH: 'master_version' (a string) is required")
    docs = raw.get("docs")
    if not isinstance(docs, dict):
        raise ConfigError("TERMS_PATH: 'docs' (a mapping of documents) is required")
    policies = {}
    for name, doc in docs.items():
        if not isinstance(doc, dict) or "version" not in doc or not doc.get("langs"):
            raise ConfigError(f"TERMS_PATH: document {name!r} needs a version and langs")
        policy: dict[str, Any] = {"version": str(doc["version"])}
        for lang, entry in doc["langs"].items():
            if not isinstance(entry, dict) or not entry.get("name") or not entry.get("url"):
                raise ConfigError(f"TERMS_PATH: {name!r} in {lang!r} needs a name and a url")
            policy[str(lang)] = {"name": str(entry["name"]), "url": str(entry["url"])}
        policies[str(name)] = policy
    return Terms(policies=policies)
