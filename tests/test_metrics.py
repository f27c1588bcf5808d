"""GET /metrics: requests, latency, mails, invitations, the delivery queue, domains.yaml."""

import re

from tests.helpers import V1
from tests.helpers import validate_address


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value in the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = ",".join(sorted(match.group(2).split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
    return 0.0


def test_metrics(client, smtp, clock, fake_homeserver):
    before = client.get("/metrics").text
    endpoint = "/_matrix/identity/api/v1/info"
    client.get(f"{V1}/info", query_string={"medium": "email", "address": "a@ac-versailles.fr"})
    client.get(f"{V1}/info", query_string={"medium": "email"})
    invite = {
        "medium": "email",
        "address": "claire@partenaire.example",
        "room_id": "!r:agent.dinum.tchap.gouv.fr",
        "sender": "@marie:agent.dinum.tchap.gouv.fr",
    }
    assert client.post(f"{V1}/store-invite", json=invite).status_code == 200
    sid = validate_address(client, smtp, "claire@partenaire.example", secret="m")
    body = {"sid": sid, "client_secret": "m", "mxid": fake_homeserver.user_id("claire")}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    clock.advance(minutes=5)

    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.text

    def grew(name, by, **labels):
        assert value(text, name, **labels) - value(before, name, **labels) == by, name

    grew("identity_requests_total", 1, endpoint=endpoint, method="GET", status="200")
    grew("identity_requests_total", 1, endpoint=endpoint, method="GET", status="400")
    grew("identity_request_duration_seconds_count", 2, endpoint=endpoint)
    grew("identity_mails_total", 2, outcome="sent")  # the invitation and the code
    grew("identity_invitations_stored_total", 1)
    assert value(text, "identity_delivery_queue_depth") == 1
    assert value(text, "identity_delivery_queue_oldest_age_seconds") == 300
    assert value(text, "identity_domains_ok") == 1
    assert value(text, "identity_domains_rules") > 50
    # Paths never appear, only route templates: no address or token in a label.
    assert "claire" not in text and "partenaire" not in text
