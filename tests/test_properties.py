"""Property-based tests over every endpoint, v1 and v2: hostile input never gets a 500.

For every route of the application (listed from `app.url_map`, so a new route without a
request generator fails `test_every_route_is_exercised`), Hypothesis builds requests
from three sources: bodies that follow the Identity Service API's own request schemas
(the OpenAPI files of the Matrix specification, assembled in `tests/spec.py`), bodies and
query strings made of the fields the service knows with values both real (a validated
session, a registered user, a stored invitation) and hostile, and arbitrary JSON or bytes.
Each answer must be:

- below 500;
- when it is an error, a Matrix error: JSON, ``{"errcode": "M_…", "error": "…"}`` (the
  pages reached from links in mails answer their errors in HTML, for people);
- when it is refused (4xx), without effect on the database: no table gains or loses a row.

The run is in-process (Flask's test client), on SQLite and on PostgreSQL, seeded per
route (the same examples on every run, so CI is reproducible, and different ones for
each route) and bounded by `EXAMPLES` per route.
"""

import contextlib
import dataclasses
import ipaddress
import itertools
import json
import os
import socket
import string
import tempfile
import zlib
from dataclasses import dataclass
from urllib.parse import quote
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import seed
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import multiple
from hypothesis.stateful import rule
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import func
from sqlalchemy import select

from app import create_app
from identity.extensions import db
from identity.federation.client import FederationClient
from identity.services import services
from tests.conftest import _empty_postgres
from tests.fake_homeserver import CA_FILE
from tests.fake_homeserver import FakeHomeserver
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import code_from_mail
from tests.helpers import landing_link_from_mail
from tests.helpers import register_user
from tests.helpers import relative
from tests.helpers import validate_address
from tests.spec import request_schemas
from tests.spec import strategy_for
from tests.support import FakeClock

# Examples per route; about 50 routes. IDENTITY_PROPERTY_EXAMPLES raises it for a longer
# hunt by hand; CI keeps the default so the run stays well inside its time.
EXAMPLES = int(os.environ.get("IDENTITY_PROPERTY_EXAMPLES", "40"))

PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    # The world fixture is module-scoped: it is built once, never per example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PREFIX = "/_matrix/identity"
# Pages a person reaches from a link in a mail: their errors are HTML pages for people.
HTML_PAGES = {
    f"{PREFIX}/api/v1/validate/email/submitToken",
    f"{PREFIX}/v2/validate/email/submitToken",
    f"{PREFIX}/invitation/<token>",
    # The guest's refusal and report pages (identity.refusals).
    f"{PREFIX}/guest/refuse/<token>",
    f"{PREFIX}/guest/refuse/<token>/undo",
    f"{PREFIX}/guest/refuse/<token>/lift",
    f"{PREFIX}/guest/report/<token>",
}
NOT_JSON = {"/metrics", "/static/<path:filename>"}

ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont-numerique.gouv.fr:agent.dinum.tchap.gouv.fr"
ADDRESS = "alice@example.fr"


# -- the world the requests are sent into --------------------------------------------


@dataclass
class World:
    app: object
    client: object
    homeserver: FakeHomeserver
    smtp: object
    user_token: str
    sid: str
    pending_sid: str
    client_secret: str
    invite_token: str
    landing_token: str
    guest_token: str  # of the invitation's refusal and report links
    ephemeral_public_key: str
    long_term_public_key: str
    mxid: str
    strategies: dict = dataclasses.field(default_factory=dict)

    def real(self, field: str) -> list:
        """Values of `field` that the service will recognise."""
        return {
            "sid": [self.sid, self.pending_sid],
            "client_secret": [self.client_secret],
            "mxid": [self.mxid, SENDER],
            "sender": [SENDER, self.mxid],
            "email": [ADDRESS, "bob@example.fr", "Alice@Example.FR"],
            "address": [ADDRESS, "claire.martin@partenaire.example"],
            "medium": ["email", "msisdn"],
            "room_id": [ROOM],
            "token": [self.invite_token, "ABCD-EFGH"],
            "private_key": [self.ephemeral_public_key],
            "public_key": [self.ephemeral_public_key, self.long_term_public_key],
            "matrix_server_name": [self.homeserver.server_name],
            "access_token": [self.homeserver.issue_openid_token("bob"), self.user_token],
            "algorithm": ["sha256", "none"],
            "pepper": ["matrixrocks"],
            "token_type": ["Bearer"],
            "next_link": ["https://www.tchap.gouv.fr/", "https://a.example:99999/"],
            "send_attempt": [1, 2, "3"],
            "List-Unsubscribe": ["One-Click"],
            "scope": ["sender", "all"],
            "code": ["ABCD-EFGH"],
        }.get(field, [])

    def row_counts(self) -> dict[str, int]:
        return row_counts(self.app)

    def renew_user_token(self) -> None:
        """An example that logs out revokes the shared token: register again."""
        r = self.client.get(f"{V2}/account", headers={"Authorization": f"Bearer {self.user_token}"})
        if r.status_code == 401:
            self.user_token = register_user(self.client, self.homeserver)


def row_counts(app) -> dict[str, int]:
    """The number of rows of every table, in one query."""
    with app.app_context(), db.engine.connect() as connection:
        counts = [
            select(func.count()).select_from(table).scalar_subquery().label(table.name)
            for table in db.metadata.sorted_tables
        ]
        return dict(connection.execute(select(*counts)).one()._mapping)


def numeric_hosts_only(host: str, port: int) -> list[str]:
    """Resolve IP literals, and nothing that needs a DNS query."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    return [info[4][0] for info in infos]


@contextlib.contextmanager
def loopback_only():
    """Refuse every socket that would leave loopback: the generated server names, origins
    and Matrix IDs name hosts all over the Internet, and no test may reach them."""
    real_connect = socket.socket.connect
    real_sendto = socket.socket.sendto

    def on_loopback(address) -> bool:
        host = address[0] if isinstance(address, tuple) else None
        return host is None or ipaddress.ip_address(host.split("%")[0]).is_loopback

    def connect(sock, address):
        if not on_loopback(address):
            raise OSError(f"test traffic stays on loopback, not {address}")
        return real_connect(sock, address)

    def sendto(sock, data, *args):
        if not on_loopback(args[-1]):
            raise OSError(f"test traffic stays on loopback, not {args[-1]}")
        return real_sendto(sock, data, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "sendto", sendto)
        yield


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(request, smtp, tmp_path_factory):
    """One application with a user, sessions and an invitation in it, on SQLite and on
    PostgreSQL (which refuses what SQLite stores: a NUL character, say)."""
    tmp = tmp_path_factory.mktemp("properties")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'identity.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_database")
    try:
        with loopback_only():
            yield from _world(smtp, tmp, url)
    finally:
        if request.param == "postgres":
            _empty_postgres(url)


def _world(smtp, tmp, database_url: str):
    homeserver = FakeHomeserver().start()
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "AUTO_MIGRATE": True,
            "MAIL_SERVER": smtp.host,
            "MAIL_PORT": smtp.port,
            "MAIL_SUPPRESS_SEND": False,
            "MAIL_DEFAULT_SENDER": "Tchap <noreply@tchap.test>",
            "PUBLIC_BASE_URL": "https://id.tchap.test",
            "SIGNING_KEY_PATH": str(tmp / "signing.key"),
            "INSTANCE_PATH": str(tmp),
            "RATELIMIT_ENABLED": False,
            "DELIVERY_WORKER_ENABLED": False,
            "FEDERATION_CA_FILE": CA_FILE,
            "FEDERATION_IP_ALLOWLIST": ["127.0.0.1/32"],
            "INTERNAL_API_TRUSTED_NETWORKS": ["127.0.0.1/32"],
            "RESTRICT_BINDS_TO_ROUTING": False,
        },
        clock=FakeClock(),
    )
    # No DNS: server names resolve only when they are IP literals (the fake homeserver's).
    federation = services(app).federation
    services(app).federation = FederationClient(
        federation.policy, lookup_srv=lambda name: [], lookup_addresses=numeric_hosts_only
    )
    client = app.test_client()
    user_token = register_user(client, homeserver)
    sid = validate_address(client, smtp, ADDRESS)
    pending = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s3cret", "email": "bob@example.fr", "send_attempt": 1},
    )
    invite = client.post(
        f"{V1}/store-invite",
        json={
            "medium": "email",
            "address": "claire.martin@partenaire.example",
            "room_id": ROOM,
            "sender": SENDER,
        },
    )
    assert pending.status_code == 200 and invite.status_code == 200, (pending.json, invite.json)
    keys = invite.json["public_keys"]
    yield World(
        app=app,
        client=client,
        homeserver=homeserver,
        smtp=smtp,
        user_token=user_token,
        sid=sid,
        pending_sid=pending.json["sid"],
        client_secret="s3cret",
        invite_token=invite.json["token"],
        landing_token=relative(landing_link_from_mail(smtp.last())).split("?")[0].split("/")[-1],
        guest_token=smtp.last().message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1],
        ephemeral_public_key=keys[1]["public_key"],
        long_term_public_key=keys[0]["public_key"],
        mxid=homeserver.user_id("alice"),
    )
    homeserver.stop()
    with app.app_context():
        db.engine.dispose()


# -- hostile values ---------------------------------------------------------------

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "\r\n",
    "a\r\nBcc: x@example.fr",
    "ñandú@example.fr",
    "straße@example.fr",
    "a@b",
    "@",
    "a@xn--",
    "a@-example.fr",
    "a" * 300 + "@example.fr",
    "x@" + "a" * 300 + ".fr",
    "\ud800@example.fr",
    "javascript:alert(1)",
    "https://a.example/\r\nLocation: x",
    "https://[::1",
    "@:",
    "@a:[::1]:0",
    "!:",
    "ed25519:0",
    "𝔸" * 10,
    "%00",
    "../../etc/passwd",
    "' OR 1=1 --",
    "9" * 40,
    "-1",
    "1e400",
]


TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(NASTY_TEXT),
    st.emails(),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(min_size=1, max_size=12),
        st.sampled_from(["example.fr", "partenaire.example", "EXAMPLE.fr", "a", ""]),
    ),
)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -1, 0]),
    st.floats(),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


# Values that broke, or could break, something in a field of that name.
HOSTILE = {
    "send_attempt": [2**63, 2**64, -(2**63) - 1, -1e20, 1e300, 1.5, "abc", "9" * 25, True, -1],
    "email": [
        "ñandú@example.fr",
        "josé@example.fr",
        "straße@example.fr",
        "ALICE@EXAMPLE.FR",
        "a@example.fr\r\nBcc: x@example.fr",
        "a@@example.fr",
        "a@[127.0.0.1]",
        '"a b"@example.fr',
        "a@xn--zz.fr",
        "a@exämple.fr",
    ],
    "next_link": [
        "https://a.example:99999/",
        "https://a.example:0/",
        "https://a.example/\r\nx",
        "https://www.tchap.gouv.fr/\n",
        "javascript:alert(1)",
        "//evil.example",
        "https://[::1",
        "https://www.tchap.gouv.fr:-1/",
        "https://user@www.tchap.gouv.fr/",
        "https://www.tchap.gouv.fr/\x00",
    ],
    "mxid": ["@a:b", "@:", "@a:[::1]:0", "@a:127.0.0.1:1", "@a:" + "x" * 300, "a:b", "@a:[::1"],
    "client_secret": ["", "a" * 256, "with space", "é", "a\x00"],
    "sid": ["", "x" * 1000, "\x00", "1"],
    "matrix_server_name": ["[64:ff9b::7f00:1]:8448", "127.0.0.1:0", "[::1]", "0", "a:99999"],
    "room_id": ["!", "!" + "x" * 300, "!\x00:a"],
    "sender": ["@", "@\x00:a", "@a:b\r\n", "@" + "x" * 300 + ":a"],
    "medium": ["", "EMAIL", "msisdn", "email\x00"],
    "org.matrix.web_client_location": [
        "https://evil.example",
        "javascript:alert(1)",
        "http://[::1",
    ],
    "token": ["", "x" * 1000],
    "private_key": ["", "!!!", "AAAA", "x" * 100],
    "public_key": ["", "!!!", "AAAA", "x" * 100],
    "expires_in": [2**63, -1, 1e300, "x"],
    "addresses": [[], ["x" * 5000], [None], [1, 2], ["a"] * 100],
    "threepids": [[["email"]], [["email", "a@b", "c"]], [[None, None]], [{"medium": "email"}]],
    "algorithm": ["SHA256", ""],
    "pepper": ["", "x" * 1000],
    "user_accepts": [["https://x.example"], "https://x.example", [None], [[]]],
    "threepid": [
        {"medium": "email"},
        {"medium": "email", "address": 5},
        {"medium": 5, "address": "a@example.fr"},
        {},
        {"medium": "email", "address": "ñandú@example.fr"},
    ],
}


def field_value(world: World, field: str, *, hostile: bool) -> st.SearchStrategy:
    """Values for `field` the service recognises, or hostile ones (built once per field)."""
    key = (field, hostile)
    if key not in world.strategies:
        world.strategies[key] = (_hostile if hostile else _valid)(world, field)
    return world.strategies[key]


LOCAL_PART = st.text(
    alphabet=string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=12
)
FRESH = {
    "email": st.builds("{}@example.fr".format, LOCAL_PART),
    "address": st.builds("{}@partenaire.example".format, LOCAL_PART),
    "client_secret": st.text(alphabet=string.ascii_letters + string.digits + ".=_-", min_size=1),
    "send_attempt": st.integers(0, 1000),
    "next_link": st.builds("https://www.tchap.gouv.fr/{}".format, LOCAL_PART),
}


def _valid(world: World, field: str) -> st.SearchStrategy:
    real = world.real(field)
    if real and field in FRESH:
        return st.one_of(st.sampled_from(real), FRESH[field])
    if real:
        return st.sampled_from(real)
    if field == "threepid":
        return st.fixed_dictionaries(
            {
                "medium": field_value(world, "medium", hostile=False),
                "address": field_value(world, "address", hostile=False),
            }
        )
    if field == "addresses":
        return st.lists(st.text(alphabet=string.ascii_letters + "-_", max_size=43), max_size=4)
    if field == "threepids":
        return st.lists(
            st.tuples(st.just("email"), field_value(world, "address", hostile=False)).map(list),
            max_size=4,
        )
    if field == "user_accepts":
        return st.lists(st.sampled_from(["https://id.tchap.test/terms", ""]), max_size=2)
    return TEXT


def _hostile(world: World, field: str) -> st.SearchStrategy:
    strategies = [TEXT, JSON_VALUES]
    if field in HOSTILE:
        strategies.insert(0, st.sampled_from(HOSTILE[field]))
    return st.one_of(*strategies)


@st.composite
def field_values(draw, world: World, fields: list[str]) -> dict:
    """Mostly recognised values, one or two of them hostile, now and then one missing."""
    if not fields:
        return {}
    # Hypothesis starts from the simplest choice (0): one hostile value at least, mostly.
    at_least = 1 if draw(st.integers(0, 3)) < 3 else 0
    hostile = draw(st.sets(st.sampled_from(fields), min_size=at_least, max_size=2))
    missing = draw(st.sets(st.sampled_from(fields), max_size=1)) if draw(st.booleans()) else set()
    return {
        name: draw(field_value(world, name, hostile=name in hostile))
        for name in fields
        if name not in missing
    }


# -- what each route takes -----------------------------------------------------------

BODY_FIELDS = {
    "validate/email/requestToken": ["client_secret", "email", "send_attempt", "next_link"],
    "validate/email/submitToken": ["sid", "client_secret", "token"],
    "validate/msisdn/requestToken": ["client_secret", "country", "phone_number", "send_attempt"],
    "validate/msisdn/submitToken": ["sid", "client_secret", "token"],
    "3pid/bind": ["sid", "client_secret", "mxid"],
    "3pid/unbind": ["mxid", "threepid", "sid", "client_secret"],
    "bulk_lookup": ["threepids"],
    "lookup": ["addresses", "algorithm", "pepper"],
    "store-invite": [
        "medium",
        "address",
        "room_id",
        "sender",
        "room_name",
        "room_alias",
        "room_avatar_url",
        "room_join_rules",
        "room_type",
        "sender_display_name",
        "sender_avatar_url",
        "org.matrix.web_client_location",
    ],
    "sign-ed25519": ["mxid", "private_key", "token"],
    "account/register": ["access_token", "matrix_server_name", "token_type", "expires_in"],
    "account/logout": [],
    "terms": ["user_accepts"],
    "internal/bind": ["address", "mxid", "medium"],
    "internal/unbind": ["address", "mxid", "medium"],
    "guest/refuse/<token>": ["List-Unsubscribe", "scope"],
    "guest/refuse/<token>/undo": [],
    "guest/refuse/<token>/lift": ["sid", "client_secret", "code"],
    "guest/report/<token>": [],
}
QUERY_FIELDS = {
    "3pid/getValidated3pid": ["sid", "client_secret"],
    "validate/email/submitToken": ["sid", "client_secret", "token", "brand"],
    "validate/msisdn/submitToken": ["sid", "client_secret", "token"],
    "lookup": ["medium", "address"],
    "info": ["address", "medium"],
    "internal-info": ["address", "medium"],
    "pubkey/isvalid": ["public_key"],
    "pubkey/ephemeral/isvalid": ["public_key"],
    "3pid/unbind": ["access_token"],
}
# Query parameters any route may receive.
COMMON_QUERY = ["access_token", "brand", "lang"]


def short_rule(rule: str) -> str:
    for prefix in (f"{PREFIX}/api/v1/", f"{PREFIX}/v2/", f"{PREFIX}/"):
        if rule.startswith(prefix):
            return rule[len(prefix) :]
    return rule.lstrip("/")


def _routes_of_the_app() -> list[tuple[str, str]]:
    """(method, rule) for every route the application serves, from its URL map."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "TESTING": True,
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/routes.sqlite3",
                "AUTO_MIGRATE": False,
                "SIGNING_KEY_PATH": f"{tmp}/signing.key",
                "INSTANCE_PATH": tmp,
                "PUBLIC_BASE_URL": "https://id.tchap.test",
                "DELIVERY_WORKER_ENABLED": False,
                "MAIL_SERVER": "127.0.0.1",
            }
        )
        found = sorted(
            (method, rule.rule)
            for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}
        )
        with app.app_context():
            db.engine.dispose()
    return found


ROUTES = _routes_of_the_app()
SPEC_SCHEMAS = {path.lstrip("/"): schema for (_, path), schema in request_schemas().items()}


@st.composite
def requests(draw, world: World, method: str, rule: str):
    """One request to `rule`: (method, url, headers, body bytes or None)."""
    name = short_rule(rule)
    path = rule
    if "<key_id>" in path:
        key_id = draw(
            st.one_of(st.sampled_from(["ed25519:0", "ed25519:9", "ed25519:"]), st.text(max_size=20))
        )
        path = path.replace("<key_id>", quote(key_id, safe=""))
    if "<token>" in path:
        known = [world.landing_token, world.invite_token]
        if "/guest/" in rule:
            known = [world.guest_token, world.guest_token, world.landing_token]
        token = draw(st.one_of(st.sampled_from(known), TEXT))
        path = path.replace("<token>", quote(token, safe="", errors="surrogatepass") or "x")
    if "<path:filename>" in path:
        filename = draw(st.sampled_from(["", "x", "../app.py", "%2e%2e/app.py", "a/../../x"]))
        path = path.replace("<path:filename>", filename or "nothing")

    headers = {}
    auth = draw(st.sampled_from(["user", "user", "none", "junk", "query"]))
    if auth == "user":
        headers["Authorization"] = f"Bearer {world.user_token}"
    elif auth == "junk":
        headers["Authorization"] = draw(
            st.sampled_from(["Bearer junk", "Bearer", "X-Matrix a", ""])
        )
    if "unbind" in name and draw(st.booleans()):
        headers["Authorization"] = draw(
            st.sampled_from(
                [
                    'X-Matrix origin=a.example,key="ed25519:1",sig="x"',
                    f'X-Matrix origin="{world.homeserver.server_name}",key="ed25519:a",sig="AAAA"',
                    'X-Matrix origin="[64:ff9b::7f00:1]",key="ed25519:1",sig="x"',
                    'X-Matrix origin="a.example/x y",key="ed25519:1",sig="x"',
                ]
            )
        )

    query = draw(field_values(world, QUERY_FIELDS.get(name, [])))
    extra = sorted(draw(st.sets(st.sampled_from(COMMON_QUERY))))
    query.update(draw(field_values(world, extra)))
    query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in query.items()}
    if auth == "query":
        query["access_token"] = world.user_token
    url = path + ("?" + urlencode(query, errors="surrogatepass") if query else "")

    if method != "POST":
        return method, url, headers, None
    kind = draw(st.sampled_from(["fields", "fields", "fields", "spec", "json", "bytes", "form"]))
    schema = SPEC_SCHEMAS.get(name)
    if kind == "spec" and schema is not None:
        body = json.dumps(draw(strategy_for(schema))).encode()
        headers["Content-Type"] = "application/json"
    elif kind in ("fields", "spec", "form"):
        fields = BODY_FIELDS.get(name, [])
        data = draw(field_values(world, fields))
        data.update(draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)))
        if kind == "form":
            form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
            body = urlencode(form, errors="surrogatepass").encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
    elif kind == "json":
        body = json.dumps(draw(JSON_VALUES)).encode()
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain"]))
    else:
        body = draw(st.binary(max_size=64))
        headers["Content-Type"] = "application/json"
    return method, url, headers, body


# -- the properties -------------------------------------------------------------------


def check(method: str, rule: str, url: str, response, before: dict, after: dict) -> None:
    status = response.status_code
    assert status < 500, f"{method} {url} answered {status}: {response.get_data(as_text=True)}"
    if status < 400:
        return
    assert before == after, f"{method} {url} was refused ({status}) but changed the database"
    if rule in HTML_PAGES and response.mimetype == "text/html":
        return
    assert response.mimetype == "application/json", (method, url, status, response.mimetype)
    body = response.get_json(silent=True)
    assert isinstance(body, dict), (method, url, status, response.get_data(as_text=True))
    assert isinstance(body.get("errcode"), str) and body["errcode"].startswith("M_"), body
    assert isinstance(body.get("error"), str), body


@pytest.mark.parametrize(("method", "rule"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
def test_no_request_gets_a_server_error(world, method, rule):
    @PROPERTY_SETTINGS
    @seed(zlib.crc32(f"{method} {rule}".encode()))
    @given(st.data())
    def run(data):
        method_, url, headers, body = data.draw(requests(world, method, rule), label="request")
        before = world.row_counts()
        response = world.client.open(url, method=method_, headers=headers, data=body)
        after = world.row_counts()
        check(method_, rule, url, response, before, after)
        if rule.endswith("/account/logout"):
            world.renew_user_token()

    run()


def test_every_route_takes_its_known_fields():
    """A new POST route needs its fields listed above, or it is only sent noise."""
    assert len(ROUTES) >= 45
    posts = {short_rule(rule) for method, rule in ROUTES if method == "POST"}
    assert posts - BODY_FIELDS.keys() == set()
    assert {name for name in SPEC_SCHEMAS} - BODY_FIELDS.keys() == set()


FLOWS = itertools.count()


class ValidationFlow(RuleBasedStateMachine):
    """Sessions driven through their whole life: request a code, read it from the mail,
    submit it (POST or the mail's GET link, with or without next_link), look the session
    up, bind it, unbind it; hostile values on the way, the same checks at every step."""

    sessions = Bundle("sessions")

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        # A client secret of its own: a replayed run starts new sessions, not old ones.
        self.secret = f"flow{next(FLOWS)}"

    def send(self, method: str, url: str, **kwargs):
        before = self.world.row_counts()
        response = self.world.client.open(url, method=method, **kwargs)
        check(method, url.split("?")[0], url, response, before, self.world.row_counts())
        return response

    def prefix_and_headers(self, v2: bool) -> tuple[str, dict]:
        if v2:
            return V2, {"Authorization": f"Bearer {self.world.user_token}"}
        return V1, {}

    @rule(
        target=sessions,
        email=st.one_of(FRESH["email"], st.sampled_from(HOSTILE["email"])),
        next_link=st.one_of(st.none(), FRESH["next_link"], st.sampled_from(HOSTILE["next_link"])),
        send_attempt=st.one_of(st.integers(1, 3), st.sampled_from(HOSTILE["send_attempt"])),
        v2=st.booleans(),
    )
    def request_token(self, email, next_link, send_attempt, v2):
        prefix, headers = self.prefix_and_headers(v2)
        body = {"client_secret": self.secret, "email": email, "send_attempt": send_attempt}
        if next_link is not None:
            body["next_link"] = next_link
        mails = len(self.world.smtp.messages)
        r = self.send("POST", f"{prefix}/validate/email/requestToken", json=body, headers=headers)
        if r.status_code != 200:
            return multiple()
        new_mails = self.world.smtp.messages[mails:]
        code = code_from_mail(new_mails[-1]) if new_mails else "ABCD-EFGH"
        return (r.json["sid"], self.secret, code)

    @rule(
        session=sessions,
        how=st.sampled_from(["POST", "GET"]),
        right_code=st.booleans(),
        v2=st.booleans(),
    )
    def submit(self, session, how, right_code, v2):
        sid, secret, code = session
        prefix, headers = self.prefix_and_headers(v2)
        fields = {"sid": sid, "client_secret": secret, "token": code if right_code else "XXXX"}
        url = f"{prefix}/validate/email/submitToken"
        if how == "GET":
            self.send("GET", f"{url}?{urlencode(fields)}", headers=headers)
        else:
            self.send("POST", url, json=fields, headers=headers)

    @rule(session=sessions, v2=st.booleans())
    def get_validated(self, session, v2):
        sid, secret, _ = session
        prefix, headers = self.prefix_and_headers(v2)
        query = urlencode({"sid": sid, "client_secret": secret})
        self.send("GET", f"{prefix}/3pid/getValidated3pid?{query}", headers=headers)

    @rule(
        session=sessions,
        mxid=st.one_of(st.just("alice"), st.sampled_from(HOSTILE["mxid"])),
        v2=st.booleans(),
    )
    def bind(self, session, mxid, v2):
        sid, secret, _ = session
        prefix, headers = self.prefix_and_headers(v2)
        if mxid == "alice":
            mxid = self.world.mxid
        body = {"sid": sid, "client_secret": secret, "mxid": mxid}
        self.send("POST", f"{prefix}/3pid/bind", json=body, headers=headers)

    @rule(session=sessions, v2=st.booleans())
    def unbind(self, session, v2):
        sid, secret, _ = session
        prefix, headers = self.prefix_and_headers(v2)
        query = urlencode({"sid": sid, "client_secret": secret})
        answer = self.world.client.get(f"{prefix}/3pid/getValidated3pid?{query}", headers=headers)
        address = answer.json.get("address", "nobody@example.fr") if answer.json else ""
        body = {
            "sid": sid,
            "client_secret": secret,
            "mxid": self.world.mxid,
            "threepid": {"medium": "email", "address": address},
        }
        self.send("POST", f"{prefix}/3pid/unbind", json=body, headers=headers)


def test_validation_flows_never_get_a_server_error(world):
    run_state_machine_as_test(
        lambda: ValidationFlow(world),
        settings=settings(
            PROPERTY_SETTINGS,
            max_examples=max(EXAMPLES // 2, 10),
            stateful_step_count=8,
        ),
    )


# -- what the properties found, as plain tests ---------------------------------------

INVITE = {
    "medium": "email",
    "address": "claire.martin@partenaire.example",
    "room_id": ROOM,
    "sender": SENDER,
}


def test_lone_surrogate_in_a_json_body_is_not_json(app, client, smtp):
    """A lone \\ud800 decodes to a str no codec encodes: it was a 500 when the invitation
    link was built (and would be in the database, a mail or a URL)."""
    before = row_counts(app)
    for field, value in [("room_name", "\\ud800"), ("address", "\\udfff@example.fr")]:
        body = json.dumps({**INVITE, field: "@@"}).replace('"@@"', f'"{value}"')
        r = client.post(f"{V1}/store-invite", data=body, content_type="application/json")
        assert (r.status_code, r.json["errcode"]) == (400, "M_NOT_JSON"), body
    r = client.post(
        f"{V1}/validate/email/requestToken",
        data='{"client_secret": "s", "email": "a\\udbff@example.fr", "send_attempt": 1}',
        content_type="application/json",
    )
    assert (r.status_code, r.json["errcode"]) == (400, "M_NOT_JSON")
    after = row_counts(app)
    assert after == before
    assert smtp.messages == []


def test_escaped_surrogate_pair_is_one_character(client, smtp):
    body = json.dumps({**INVITE, "room_name": "Projet \U0001f680"})  # ensure_ascii: \ud83d\ude80
    assert "\\ud83d\\ude80" in body
    r = client.post(f"{V1}/store-invite", data=body, content_type="application/json")
    assert r.status_code == 200, r.json
    assert "Projet \U0001f680" in smtp.last().text()


def test_web_client_location_that_is_not_a_url_falls_back(client, smtp):
    """urlsplit raises on an unclosed IPv6 bracket: that was a 500."""
    for location in ("https://[::1", "https://[example.fr/", "http://["):
        r = client.post(
            f"{V1}/store-invite",
            json={**INVITE, "org.matrix.web_client_location": location},
        )
        assert r.status_code == 200, r.json
        page = client.get(relative(landing_link_from_mail(smtp.last()))).text
        assert 'href="https://www.tchap.gouv.fr/#/room/' in page


def test_next_link_that_is_not_a_url_is_invalid_param(client, smtp):
    """urlsplit raises on an unclosed IPv6 bracket: requestToken answered 500."""
    for next_link in ("https://[::1", "https://[www.tchap.gouv.fr/"):
        r = client.post(
            f"{V1}/validate/email/requestToken",
            json={
                "client_secret": "s",
                "email": ADDRESS,
                "send_attempt": 1,
                "next_link": next_link,
            },
        )
        assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert smtp.messages == []
