"""Rate limits: per client IP, per user, per mail recipient; shared through Redis."""

import uuid

import pytest

from app import create_app
from identity.config import ConfigError
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
