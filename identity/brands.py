"""Brand names: the template folders a request may choose (Sydent's `brand` argument)."""

import re

# A folder name, never a path: a brand from a request cannot leave TEMPLATES_PATH.
_BRAND = re.compile(r"^[a-z0-9_-]{1,64}$")


def is_brand(name: str) -> bool:
    """Whether `name` may name a brand folder."""
    return bool(_BRAND.match(name))
