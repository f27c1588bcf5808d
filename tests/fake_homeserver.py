"""A fake homeserver: a real HTTPS server on loopback with its own signing key.

It serves what our service asks of homeservers (its keys, OpenID userinfo, onbind)
and signs requests with X-Matrix the way a homeserver does, so that the service is
tested over real connections.
"""

import json
import os
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
import signedjson.key
import signedjson.sign
import trustme

from testing.processes import free_port

_CA = trustme.CA()
# The service under test trusts this CA (FEDERATION_CA_FILE), so TLS is verified for real.
CA_FILE = os.path.join(tempfile.mkdtemp(prefix="fake-homeserver-ca-"), "ca.pem")
_CA.cert_pem.write_to_path(CA_FILE)


class FakeHomeserver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.signing_key = signedjson.key.generate_signing_key("fake1")
        self.openid_tokens: dict[str, str] = {}
        self.onbind_calls: list[dict] = []
        self.onbind_status = 200
        self.key_requests = 0
        self.userinfo_requests = 0
        self._server: ThreadingHTTPServer | None = None
        cert = _CA.issue_cert("127.0.0.1")
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._context)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "FakeHomeserver":
        handler = type("Handler", (_Handler,), {"homeserver": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.05)
        self.start()

    # -- what tests ask of it ------------------------------------------------
    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def issue_openid_token(self, localpart: str, *, sub: str | None = None) -> str:
        token = f"openid-{localpart}-{len(self.openid_tokens)}"
        self.openid_tokens[token] = sub or self.user_id(localpart)
        return token

    @property
    def verify_key_base64(self) -> str:
        return signedjson.key.encode_verify_key_base64(self.signing_key.verify_key)

    def key_id(self) -> str:
        return f"{self.signing_key.alg}:{self.signing_key.version}"

    def sign_request(
        self,
        method: str,
        uri: str,
        destination: str,
        content: dict | None = None,
        *,
        key=None,
        destination_field: str = "destination",
    ) -> str:
        """The Authorization header a homeserver would send (server-server API; Synapse
        signs `destination_is` instead when it calls identity servers)."""
        request = {
            "method": method,
            "uri": uri,
            "origin": self.server_name,
            destination_field: destination,
        }
        if content is not None:
            request["content"] = content
        key = key or self.signing_key
        signed = signedjson.sign.sign_json(request, self.server_name, key)
        sig = signed["signatures"][self.server_name][f"{key.alg}:{key.version}"]
        return (
            f'X-Matrix origin="{self.server_name}",destination="{destination}",'
            f'key="{key.alg}:{key.version}",sig="{sig}"'
        )

    def key_document(self) -> dict:
        document = {
            "server_name": self.server_name,
            "verify_keys": {self.key_id(): {"key": self.verify_key_base64}},
            "old_verify_keys": {},
            "valid_until_ts": int((time.time() + 3600) * 1000),
        }
        return signedjson.sign.sign_json(document, self.server_name, self.signing_key)


class _Handler(BaseHTTPRequestHandler):
    homeserver: FakeHomeserver

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_matrix/key/v2/server":
            self.homeserver.key_requests += 1
            return self._json(200, self.homeserver.key_document())
        if url.path == "/_matrix/federation/v1/openid/userinfo":
            self.homeserver.userinfo_requests += 1
            token = parse_qs(url.query).get("access_token", [""])[0]
            sub = self.homeserver.openid_tokens.get(token)
            if sub is None:
                return self._json(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"})
            return self._json(200, {"sub": sub})
        return self._json(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if urlsplit(self.path).path == "/_matrix/federation/v1/3pid/onbind":
            if self.homeserver.onbind_status != 200:
                return self._json(self.homeserver.onbind_status, {"errcode": "M_UNKNOWN"})
            self.homeserver.onbind_calls.append(body)
            return self._json(200, {})
        return self._json(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"})

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_homeserver():
    """A running fake homeserver (the test configuration allowlists loopback)."""
    homeserver = FakeHomeserver().start()
    yield homeserver
    homeserver.stop()
