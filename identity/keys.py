"""The service's long-term ed25519 signing key: loading, generation and signing."""

import logging
import os
import tempfile
from typing import Any
from typing import cast

import signedjson.key
import signedjson.sign
from nacl.exceptions import CryptoError
from signedjson.types import SigningKey
from signedjson.types import VerifyKey

from identity.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_KEY_ID = "0"


EMBEDDED_FILE = "signing.key"


def embedded_path(instance_path: str) -> str:
    """Where the embedded mode keeps the key: in the instance folder."""
    return os.path.join(instance_path, EMBEDDED_FILE)


class MissingSigningKey(ConfigError):
    """No key at SIGNING_KEY_PATH, where none may be created."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"SIGNING_KEY_PATH: no signing key at {path}; check the path, restore the key"
            " from a backup, or create a first one with `flask keys generate`"
        )


class SigningKeyHolder:
    """The app's signing key at SIGNING_KEY_PATH: loaded at start by a server, on first
    use by commands and tests, then kept.

    :param create_on_first_use: generate a missing key on first use; only in an app a
        test builds (a server creates it at start, in the embedded mode only; a command
        never).
    """

    def __init__(self, path: str, *, create_on_first_use: bool = False) -> None:
        self.path = path
        self.create_on_first_use = create_on_first_use
        self._key: SigningKey | None = None

    def load_now(self, *, create: bool) -> None:
        """Load the key at start.

        :param create: generate the key when there is none (the embedded mode's first start).
        :raises ConfigError: when the path holds no valid key (or none at all, unless
            `create`) or cannot be written.
        """
        self._key = load(self.path, create=create)

    def key(self) -> SigningKey:
        """The key, read on first use and then kept.

        :raises ConfigError: no valid key at the path.
        """
        if self._key is None:
            self._key = load(self.path, create=self.create_on_first_use)
        return self._key

    def replace(self, key: SigningKey) -> None:
        """Sign with `key` from now on (a key imported from Sydent, already written)."""
        self._key = key


def load(path: str, *, create: bool = False) -> SigningKey:
    """Read the signing key at `path`; generate and save one when absent and `create`.

    Accepts Sydent's format, ``ed25519 <version> <unpadded base64 seed>``, so a
    deployment keeps its key and the signatures already in rooms stay valid.

    :raises ConfigError: no key (and not `create`), an invalid one, an unreadable file.
    """
    try:
        if os.path.exists(path):
            return read(path)
        if not create:
            raise MissingSigningKey(path)
        try:
            key = generate(path)
        except FileExistsError:  # another worker generated it first
            return read(path)
    except ConfigError:
        raise
    except ValueError as e:  # not a valid key
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"SIGNING_KEY_PATH: cannot read or create {path}: {e.strerror}") from None
    logger.info("Generated a new signing key %s:%s in %s", key.alg, key.version, path)
    return key


def read(path: str) -> SigningKey:
    with open(path) as f:
        text = f.read().strip()
    return parse(text)


def parse(text: str) -> SigningKey:
    """Parse ``ed25519 <version> <base64>``, or a bare base64 seed (key id ``ed25519:0``)."""
    parts = text.split()
    if len(parts) == 1:
        parts = ["ed25519", DEFAULT_KEY_ID, parts[0]]
    if len(parts) != 3 or parts[0] != "ed25519":
        raise ValueError("SIGNING_KEY_PATH: expected 'ed25519 <version> <base64 seed>'")
    try:
        return signedjson.key.decode_signing_key_base64(parts[0], parts[1], parts[2])
    except (ValueError, CryptoError) as e:  # bad base64 (binascii.Error), a wrong-size seed
        raise ValueError(f"SIGNING_KEY_PATH: not a valid ed25519 key ({e})") from None


def generate(path: str, version: str = DEFAULT_KEY_ID) -> SigningKey:
    """Write a new key to `path`, which must not exist.

    The key is written to a private temporary file, then linked into place: another
    worker or thread never reads a half-written key, and if two generate at once,
    one gets FileExistsError and reads the winner's.
    """
    key = signedjson.key.generate_signing_key(version)
    _write_file(path, key, replace=False)
    return key


def replace(path: str, version: str = DEFAULT_KEY_ID) -> SigningKey:
    """Write a new key to `path`, replacing any key there atomically."""
    key = signedjson.key.generate_signing_key(version)
    write(path, key)
    return key


def write(path: str, key: SigningKey) -> None:
    """Write `key` in Sydent's format, owner-only, replacing the file atomically."""
    _write_file(path, key, replace=True)


def _write_file(path: str, key: SigningKey, *, replace: bool) -> None:
    """The one writer of key files: a private temporary file, then moved into place.

    Readers never see a half-written key. With `replace`, the move is a rename over any
    existing file; without, a link, which fails with FileExistsError if the path exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Created with owner-only permissions: this key signs everything we assert.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".signing-key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(serialise(key) + "\n")
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path exists, unlike a rename
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def serialise(key: SigningKey) -> str:
    return f"{key.alg} {key.version} {signedjson.key.encode_signing_key_base64(key)}"


def key_id(key: SigningKey) -> str:
    return f"{key.alg}:{key.version}"


def public_key_base64(key: SigningKey) -> str:
    # Only the key's bytes are encoded: nacl's VerifyKey, without signedjson's alg/version.
    return signedjson.key.encode_verify_key_base64(cast(VerifyKey, key.verify_key))


def sign(payload: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """Return `payload` signed per the Signing JSON rules of the appendices."""
    return signedjson.sign.sign_json(dict(payload), server_name, key)
