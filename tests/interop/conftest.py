"""Session fixtures: the Synapse virtualenv, a test CA, our service and Synapse running."""

import pytest

from testing.processes import free_port
from tests.interop.synapse import Certificates
from tests.interop.synapse import IdentityServer
from tests.interop.synapse import Synapse
from tests.interop.synapse import domains_yaml
from tests.interop.synapse import ensure_synapse


@pytest.fixture(scope="session")
def synapse_python():
    """Synapse's Python, installed on first use into the cached virtualenv."""
    return ensure_synapse()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("interop-tls"))


@pytest.fixture(scope="session")
def interop_ports(synapse_python):
    """(our service, Synapse's client listener, Synapse's federation listener)."""
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return tuple(sorted(ports))


@pytest.fixture(scope="session")
def identity_server(tmp_path_factory, interop_ports, certificates, smtp):
    ours, _, federation = interop_ports
    server = IdentityServer(
        directory=tmp_path_factory.mktemp("identity"),
        port=ours,
        certificates=certificates,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        domains_yaml=domains_yaml(f"localhost:{federation}"),
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory, synapse_python, interop_ports, certificates, smtp, identity_server):
    _, client, federation = interop_ports
    homeserver = Synapse(
        python=synapse_python,
        directory=tmp_path_factory.mktemp("synapse"),
        client_port=client,
        federation_port=federation,
        certificates=certificates,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        identity_base=identity_server.base,
        identity_secret=identity_server.secret,
    ).start()
    yield homeserver
    homeserver.stop()
