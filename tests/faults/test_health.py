"""/health tells a load balancer the truth (issue 21): the database reachable and its
schema the code's, Redis reachable when the limits are kept there."""

import pytest

from testing.processes import wait_until
from testing.servers import ROOT
from tests.faults.client import Service

pytestmark = pytest.mark.faults

# The migrations' revisions, oldest first ("0001", …): the last is the code's schema.
REVISIONS = sorted(
    path.name.split("_", 1)[0] for path in (ROOT / "migrations" / "versions").glob("[0-9]*.py")
)


def set_revision(cluster, database: str, revision: str) -> None:
    with cluster.connect(database.rsplit("/", 1)[1]) as connection:
        connection.execute("UPDATE alembic_version SET version_num = %s", (revision,))


def health_says(service: Service, code: int, **fields: str):
    """A wait_until predicate: /health answers HTTP `code` with `fields` in its body."""

    def check() -> bool:
        answer = service.health()
        return answer.status == code and all(
            answer.body.get(key) == value for key, value in fields.items()
        )

    return check


def test_health_reports_the_schema_and_redis(cluster, database, serve):
    service = serve(database)  # limits in memory: Redis is not used
    health = service.health()
    assert health.status == 200, health.body
    fields = ("status", "database", "schema", "redis")
    assert [health.body.get(key) for key in fields] == ["ok", "ok", "current", "off"]

    # Migrated by a newer version meanwhile (a rolling deployment): not this code's.
    set_revision(cluster, database, "9999_from_the_future")
    wait_until(health_says(service, 503, errcode="M_UNKNOWN", database="ok", schema="ahead"),
               timeout=10, what="/health to say the schema is ahead")  # fmt: skip
    # New code on a database not migrated yet.
    set_revision(cluster, database, REVISIONS[-2])
    wait_until(health_says(service, 503, errcode="M_UNKNOWN", database="ok", schema="behind"),
               timeout=10, what="/health to say the schema is behind")  # fmt: skip
    set_revision(cluster, database, REVISIONS[-1])
    wait_until(health_says(service, 200, status="ok", schema="current"), timeout=10,
               what="/health to say all is well again")  # fmt: skip
