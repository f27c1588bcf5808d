"""Rate limits: per client IP, per user, per mail recipient; shared through Redis."""

import uuid

import pytest
import redis
import requests
from limits import parse_many

from app import create_app
from identity import limits as limits_module
from identity.config import ConfigError
from identity.errors import LimitExceeded
from identity.services import services
from testing.processes import free_port
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user
from tests.helpers import request_code


def info(client, ip="192.0.2.10"):
    query = {"medium": "email", "address": "a@ac-versailles.fr"}
    return client.get(f"{V1}/info", query_string=query, environ_base={"REMOTE_ADDR": ip})


def assert_limited(r, window_ms):
    assert (r.status_code, r.json["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert 0 < r.json["retry_after_ms"] <= window_ms


def test_per_client_ip(make_app):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="3/minute").test_client()
    assert [info(client).status_code for _ in range(3)] == [200, 200, 200]
    assert_limited(info(client), 60_000)
    assert info(client, ip="192.0.2.11").status_code == 200  # another client


def test_per_user(make_app, fake_homeserver):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="2/minute").test_client()
    alice = auth(register_user(client, fake_homeserver, "alice"))
    bob = auth(register_user(client, fake_homeserver, "bob"))
    assert [client.get(f"{V2}/account", headers=alice).status_code for _ in range(2)] == [200, 200]
    assert_limited(client.get(f"{V2}/account", headers=alice), 60_000)
    assert client.get(f"{V2}/account", headers=bob).status_code == 200


def test_per_mail_recipient_whoever_asks(make_app, smtp):
    client = make_app(RATELIMIT_ENABLED=True, MAIL_LIMIT_PER_ADDRESS="2/hour").test_client()
    address = "marie@ac-versailles.fr"
    assert request_code(client, address, secret="one").status_code == 200
    invite = {
        "medium": "email",
        "address": address,
        "room_id": "!r:agent.dinum.tchap.gouv.fr",
        "sender": "@luc:agent.dinum.tchap.gouv.fr",
    }
    assert client.post(f"{V1}/store-invite", json=invite).status_code == 200
    assert_limited(request_code(client, address, secret="two"), 3_600_000)
    assert len(smtp.to(address)) == 2
    assert request_code(client, "paul@ac-versailles.fr").status_code == 200


def test_switched_off(make_app):
    client = make_app(RATELIMIT_ENABLED=False, RATELIMIT_PER_IP="1/minute").test_client()
    assert [info(client).status_code for _ in range(5)] == [200] * 5


def test_bad_limits_stop_start_up(config):
    with pytest.raises(ConfigError, match="RATELIMIT_PER_IP"):
        create_app({**config, "RATELIMIT_ENABLED": True, "RATELIMIT_PER_IP": "lots"})


def test_limits_hold_across_instances_through_redis(make_app, redis_url):
    settings = {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_PER_IP": "4/minute",
    }
    first, second = make_app(**settings).test_client(), make_app(**settings).test_client()
    ip = f"198.51.100.{uuid.uuid4().int % 250}"
    statuses = [info(client, ip).status_code for client in (first, second, first, second)]
    assert statuses == [200] * 4
    assert_limited(info(first, ip), 60_000)
    assert_limited(info(second, ip), 60_000)


def test_every_window_of_a_request_in_one_redis_round_trip(make_app, redis_url, monkeypatch):
    """Two per-IP windows, checked and counted with one exchange with Redis."""
    settings = {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_PER_IP": "3/minute;1000/hour",
    }
    client = make_app(**settings).test_client()
    ip = f"198.51.100.{uuid.uuid4().int % 250}"
    assert info(client, ip).status_code == 200  # connected, scripts loaded
    sent = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self, command, check_health=True):
        sent.append(command)
        return real_send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    assert info(client, ip).status_code == 200
    assert len(sent) == 1
    sent.clear()
    assert info(client, ip).status_code == 200
    assert_limited(info(client, ip), 60_000)  # the minute's window still holds
    assert len(sent) == 2
    # The hour's window was counted too, the refused request not.
    hour_key = next(k for k in redis.Redis.from_url(redis_url).keys("*") if b"/hour" in k)
    assert redis.Redis.from_url(redis_url).llen(hour_key) == 3


def test_limits_still_hold_after_redis_forgets_its_scripts(make_app, redis_url):
    settings = {"RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": redis_url,
                "RATELIMIT_PER_IP": "2/minute"}  # fmt: skip
    client = make_app(**settings).test_client()
    ip = f"198.51.100.{uuid.uuid4().int % 250}"
    assert info(client, ip).status_code == 200
    redis.Redis.from_url(redis_url).script_flush()  # a Redis restarted, say
    assert info(client, ip).status_code == 200
    assert_limited(info(client, ip), 60_000)


JUNK = {"Authorization": "Bearer junk"}


@pytest.mark.parametrize(
    "send",
    [
        lambda c, ip: c.get(
            f"{V1}/info",
            query_string={"medium": "email", "address": "a@ac-versailles.fr"},
            headers=JUNK,
            environ_base={"REMOTE_ADDR": ip},
        ),
        lambda c, ip: c.get(
            f"{V1}/info",
            query_string={
                "medium": "email",
                "address": "a@ac-versailles.fr",
                "access_token": "junk",
            },
            environ_base={"REMOTE_ADDR": ip},
        ),
        lambda c, ip: c.post(
            f"{V1}/bulk_lookup",
            json={"threepids": [["email", "a@ac-versailles.fr"]]},
            headers=JUNK,
            environ_base={"REMOTE_ADDR": ip},
        ),
    ],
    ids=["info-header", "info-query", "bulk_lookup"],
)
def test_a_made_up_token_does_not_skip_the_per_ip_limit(make_app, send):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="3/minute").test_client()
    assert [send(client, "192.0.2.20").status_code for _ in range(3)] == [200] * 3
    assert_limited(send(client, "192.0.2.20"), 60_000)


def test_a_made_up_token_sends_no_more_mail_than_none(make_app, smtp):
    client = make_app(
        RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="3/minute", MAIL_LIMIT_PER_ADDRESS="100/hour"
    ).test_client()
    statuses = [
        request_code(
            client, f"agent{i}@ac-versailles.fr", headers={"Authorization": f"Bearer junk{i}"}
        ).status_code
        for i in range(6)
    ]
    assert statuses == [200] * 3 + [429] * 3
    assert len(smtp.messages) == 3


def test_a_valid_token_counts_against_its_user_on_every_endpoint(make_app, fake_homeserver):
    client = make_app(
        RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="2/minute", RATELIMIT_PER_USER="4/minute"
    ).test_client()
    alice = auth(register_user(client, fake_homeserver, "alice"))  # 1 request from the IP
    query = {"medium": "email", "address": "a@ac-versailles.fr"}
    statuses = [client.get(f"{V1}/info", query_string=query, headers=alice).status_code]
    statuses += [client.get(f"{V2}/account", headers=alice).status_code for _ in range(3)]
    assert statuses == [200] * 4  # beyond the per-IP limit: counted as alice's
    assert_limited(client.get(f"{V1}/info", query_string=query, headers=alice), 60_000)
    assert_limited(client.get(f"{V2}/account", headers=alice), 60_000)


def test_a_token_in_a_percent_encoded_query_counts_against_its_user(make_app, fake_homeserver):
    # Synapse may send its token in /hash_details's query string; the limiter reads it
    # however the name is spelled, as the view does.
    client = make_app(
        RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="2/minute", RATELIMIT_PER_USER="6/minute"
    ).test_client()
    token = register_user(client, fake_homeserver, "alice")  # 1 request from the IP
    statuses = [
        client.get(f"{V2}/hash_details?access%5Ftoken={token}").status_code for _ in range(4)
    ]
    assert statuses == [200] * 4  # beyond the per-IP limit: counted as alice's


TRUSTED_HOMESERVER = "10.20.0.5"


@pytest.fixture(params=["memory", "redis"])
def limit_storage(request):
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


ADDRESS_QUERY = {"medium": "email", "address": "agent@ac-versailles.fr"}


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (f"{V1}/internal-info", ADDRESS_QUERY),
        (f"{V1}/info", ADDRESS_QUERY),
        (f"{V1}/pubkey/isvalid", {"public_key": "AAAA"}),
    ],
    ids=["internal-info", "info", "pubkey-isvalid"],
)
def test_trusted_homeservers_are_not_held_to_the_public_per_ip_limit(
    make_app, limit_storage, path, query
):
    # The shipped limits, the real limiter: a homeserver registering users calls from
    # one address, far more often than a person.
    client = make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=limit_storage,
        INTERNAL_API_TRUSTED_NETWORKS=["10.20.0.0/16"],
    ).test_client()
    load = 600  # five times the public per-minute limit, within one window
    trusted = [
        client.get(path, query_string=query, environ_base={"REMOTE_ADDR": TRUSTED_HOMESERVER})
        for _ in range(load)
    ]
    assert [r.status_code for r in trusted].count(429) == 0
    public = [
        client.get(path, query_string=query, environ_base={"REMOTE_ADDR": "203.0.113.9"})
        for _ in range(130)
    ]
    assert [r.status_code for r in public].count(429) == 10  # 120/minute


def test_the_internal_secret_lifts_the_per_ip_limit(make_app):
    client = make_app(
        RATELIMIT_ENABLED=True, RATELIMIT_PER_IP="2/minute", INTERNAL_API_SECRET="s3cr3t-internal"
    ).test_client()
    query = {"medium": "email", "address": "agent@ac-versailles.fr"}
    secret = {"Authorization": "Bearer s3cr3t-internal"}
    statuses = [
        client.get(f"{V1}/internal-info", query_string=query, headers=secret).status_code
        for _ in range(10)
    ]
    assert statuses == [200] * 10
    wrong = {"Authorization": "Bearer guessed"}
    statuses = [
        client.get(f"{V1}/internal-info", query_string=query, headers=wrong).status_code
        for _ in range(3)
    ]
    assert statuses == [403, 403, 429]


class FromAddress(requests.adapters.HTTPAdapter):
    """Connect from a given loopback address (127.0.0.0/8 is all ours on Linux)."""

    def __init__(self, source: str):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(source))
    return session


def test_under_gunicorn_a_trusted_homeserver_is_never_limited(tmp_path, redis_url):
    """Several workers sharing the limits in Redis, the shipped per-IP limits: a
    homeserver on a trusted network keeps being answered far beyond them, while
    another address is stopped at 120 a minute."""
    env = service_env(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        tmp_path,
        WORKERS="2",
        THREADS="2",
        DELIVERY_WORKER_ENABLED="false",
        MAIL_SERVER="127.0.0.1",  # never used here
        MAIL_PORT=str(free_port()),
        RATELIMIT_ENABLED="true",
        RATELIMIT_STORAGE_URI=redis_url,
        INTERNAL_API_TRUSTED_NETWORKS="127.0.0.1/32",
    )
    migrate(env)
    server = Gunicorn(env, ("-c", "gunicorn.conf.py"))
    try:
        query = {"medium": "email", "address": "agent@ac-versailles.fr"}
        trusted, other = session_from("127.0.0.1"), session_from("127.0.0.2")
        statuses = [
            trusted.get(f"{server.base}{path}", params=query, timeout=10).status_code
            for _ in range(300)
            for path in (f"{V1}/internal-info", f"{V1}/info")
        ]
        assert statuses.count(200) == 600
        statuses = [
            other.get(f"{server.base}{V1}/info", params=query, timeout=10).status_code
            for _ in range(130)
        ]
        assert (statuses.count(200), statuses.count(429)) == (120, 10)
    finally:
        server.stop()


class FrozenTime:
    """time.time() for identity.limits, moved by hand."""

    def __init__(self, monkeypatch, start: float = 1_000_000.0) -> None:
        self.now = start
        monkeypatch.setattr(limits_module.time, "time", lambda: self.now)


@pytest.fixture
def memory_limits(monkeypatch, make_app):
    clock = FrozenTime(monkeypatch)
    # Through make_app, which closes the app's connections: an app left to the garbage
    # collector leaves them unclosed (a ResourceWarning, in whichever later test).
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                   RATELIMIT_PER_IP="2/minute;3/hour")  # fmt: skip
    with app.app_context():
        yield services(app).limits, clock


def hit(limits, ip="192.0.2.1") -> int | None:
    """None when counted, else the retry_after_ms of the refusal."""
    try:
        limits.check("per_ip", ip)
    except LimitExceeded as e:
        return e.extra["retry_after_ms"]
    return None


def test_in_memory_windows_move_with_time(memory_limits):
    limits, clock = memory_limits
    assert [hit(limits), hit(limits)] == [None, None]
    clock.now += 10
    assert hit(limits) == 50_000  # the minute's oldest hit leaves in 50 s
    clock.now += 50
    assert hit(limits) is None  # the minute has room again; the hour holds 3
    clock.now += 30
    assert hit(limits) == 3_600_000 - 90_000  # the hour is full until its first hit leaves
    assert hit(limits, ip="192.0.2.2") is None  # another key


def test_in_memory_a_refused_hit_is_counted_in_no_window(memory_limits):
    limits, clock = memory_limits
    assert [hit(limits), hit(limits)] == [None, None]
    for _ in range(5):
        assert hit(limits) is not None  # the minute is full: the hour must not count these
    clock.now += 61
    assert hit(limits) is None  # the hour's third hit, not its eighth
    assert hit(limits) is not None  # the hour is now full


def test_in_memory_idle_keys_are_swept(memory_limits, monkeypatch):
    limits, clock = memory_limits
    windows = limits.windows
    for n in range(100):
        hit(limits, ip=f"192.0.2.{n}")
    assert len(windows._hits) == 200  # a minute's and an hour's window per address
    clock.now += 3601
    monkeypatch.setattr(windows, "_next_sweep", 0)
    assert hit(limits, ip="198.51.100.1") is None
    assert len(windows._hits) == 2


def test_window_keys_are_the_librarys():
    """Counters stay where the library (and any other instance of ours) keeps them."""
    for item in parse_many("120/minute;2000/hour;5/2 seconds"):
        assert limits_module.Window.of(item).key("per_ip", "192.0.2.1") == item.key_for(
            "per_ip", "192.0.2.1"
        )
