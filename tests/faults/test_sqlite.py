"""SQLite on a full disk (issue 21): a 16 MiB tmpfs, filled while the service runs.
Writes answer 503 with Retry-After and a clear log line, reads keep working, and
nothing already stored is lost."""

import sqlite3

import pytest

from testing.faults import MountRefused
from testing.faults import fill
from testing.faults import tmpfs
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import IN_CI
from tests.faults.client import new_address
from tests.faults.client import warnings_about

pytestmark = pytest.mark.faults

MXID = "@stored:agent.dinum.tchap.gouv.fr"


@pytest.fixture
def small_disk():
    try:
        with tmpfs("16m") as directory:
            yield directory
    except MountRefused as e:
        if IN_CI:
            pytest.fail(f"a tmpfs is required in CI: {e}")
        pytest.skip(f"mounting a tmpfs is refused here (run as root): {e}")


def test_sqlite_disk_full(small_disk, keys_dir, serve, smtp):
    path = small_disk / "identity.sqlite3"
    url = f"sqlite:///{path}"
    migrate(service_env(url, keys_dir))
    service = serve(url, RATELIMIT_ENABLED="false")
    stored = new_address("stored")
    service.bound(smtp, stored, MXID)
    pending = service.request_token(new_address("pending"))
    assert pending.status == 200, pending.body

    offset = len(service.log())
    filler = fill(small_disk)
    writes = [service.request_token(new_address("full")) for _ in range(6)]
    writes += [service.store_invite(new_address("guest")) for _ in range(3)]
    reads = [service.lookup_v1(stored), service.status(), service.info(stored)]
    lines = service.log_lines_since(offset)
    filler.unlink()

    for answer in writes:
        assert answer.is_unavailable(), (answer, answer.body, answer.retry_after)
    assert [answer.status for answer in reads] == [200] * 3, reads
    assert reads[0].body.get("mxid") == MXID
    text = "\n".join(lines)
    assert "Traceback" not in text, text[-3000:]
    assert warnings_about(lines, "database"), text[-3000:]

    # Room again: writes succeed, and nothing stored before was lost.
    assert service.request_token(new_address("after")).status == 200
    assert service.lookup_v1(stored).body.get("mxid") == MXID
    service.server.stop()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        sids = {sid for (sid,) in connection.execute("SELECT sid FROM validation_session")}
    connection.close()
    assert pending.body["sid"] in sids
