"""domains.yaml: validation, resolution, the admin commands and the info.yaml import."""

import time
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from identity.routing import schema
from identity.routing import table as routing_table
from identity.routing.sydent_info import import_info
from identity.routing.sydent_info import sydent_target
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import validate_address

ROOT = Path(__file__).resolve().parent.parent
INFO_YAML = Path(__file__).parent / "fixtures" / "info.yaml"

VALID = """
platforms:
  education: {server: agent.education.tchap.gouv.fr}
  agent: {server: agent.tchap.gouv.fr}
  externe: {server: agent.externe.tchap.gouv.fr, requires_invite: true}
default: externe
domains:
  .gouv.fr: agent
  .education.gouv.fr: education
  "*.ac-lyon.fr": agent
  ac-lyon.fr: education
addresses:
  Jeanne.Exemple@LaPoste.net: education
"""


def problems(text: str) -> list[str]:
    with pytest.raises(schema.RoutingError) as caught:
        schema.load_text(text)
    return caught.value.problems


def test_the_most_specific_rule_wins():
    table = schema.load_text(VALID)

    def where(address):
        match = table.resolve(address)
        return match.platform.name, match.rule

    assert where("a@gouv.fr") == ("agent", ".gouv.fr")
    assert where("a@x.y.gouv.fr") == ("agent", ".gouv.fr")
    assert where("a@education.gouv.fr") == ("education", ".education.gouv.fr")
    assert where("a@dgesco.education.gouv.fr") == ("education", ".education.gouv.fr")
    assert where("a@ac-lyon.fr") == ("education", "ac-lyon.fr")
    assert where("a@lycee.ac-lyon.fr") == ("agent", "*.ac-lyon.fr")
    assert where("jeanne.exemple@laposte.net") == ("education", "jeanne.exemple@laposte.net")
    assert where("a@gouv.fr.example.com") == ("externe", "default")


LABELS = st.sampled_from(["gouv", "fr", "education", "ac-lyon", "x", "lycee", "com"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(LABELS, min_size=1, max_size=5).map(".".join), max_size=30))
def test_a_loaded_table_remembers_each_domain_as_it_resolves_it(domains):
    sealed = schema.load_text(VALID)
    fresh = [schema.load_text(VALID).resolve_domain(domain) for domain in domains]
    # Each domain twice: the second answer is the remembered one.
    assert [sealed.resolve_domain(d) for d in domains] == fresh
    assert [sealed.resolve_domain(d) for d in domains] == fresh


def test_a_table_being_built_sees_every_rule_and_a_sealed_one_remembers_a_bounded_set(monkeypatch):
    table = routing_table.RoutingTable(platforms={}, default=schema.load_text(VALID).default)
    assert table.resolve_domain("a.fr").rule == "default"
    other = routing_table.Platform(name="p", server="p.example")
    table.domains[routing_table.Scope.TREE]["a.fr"] = other
    assert table.resolve_domain("a.fr").platform is other  # not the earlier answer
    monkeypatch.setattr(routing_table, "MEMO_SIZE", 3)
    table.seal()
    for n in range(10):
        assert table.resolve_domain(f"{n}.a.fr").platform is other
    assert len(table._memo) == 3


def test_the_shipped_file_is_valid_and_routes_the_state_network():
    table = schema.load_file(str(ROOT / "domains.yaml"))
    expected_platforms = {
        "agent", "agriculture", "collectivites", "culture", "dev-durable", "diplomatie",
        "dinum", "education", "elysee", "externe", "finances", "interieur", "intradef",
        "justice", "pm", "social", "ssi",
    }  # fmt: skip
    assert set(table.platforms) == expected_platforms
    for platform in table.platforms.values():
        assert (platform.protected_server or platform.server).endswith(".tchap.gouv.fr")
    assert table.resolve("a@ac-versailles.fr").platform.server == "agent.education.tchap.gouv.fr"
    assert table.resolve("a@ac-rouen.fr").platform.server == "agent.education.tchap.gouv.fr"
    assert table.resolve("a@interieur.gouv.fr").platform.server == "agent.interieur.tchap.gouv.fr"
    assert table.default.server == "agent.externe.tchap.gouv.fr"
    assert table.default.requires_invite


# What the product's own guidance says of some addresses (../shared/seeds/): the
# académies' agents register with their académie's address (Normandie's with
# @ac-rouen.fr, "et pas @ac-normandie.fr"), and a person outside the State joins only
# when invited (pierre.dupont@gmail.com).
SHIPPED_ROUTES = [
    ("pierre.dupont@ac-versailles.fr", "education", "agent.education.tchap.gouv.fr", "no"),
    ("agent@ac-rouen.fr", "education", "agent.education.tchap.gouv.fr", "no"),
    ("agent@ac-caen.fr", "education", "agent.education.tchap.gouv.fr", "no"),
    ("agent@ac-normandie.fr", "externe", "agent.externe.tchap.gouv.fr", "yes"),
    ("pierre.dupont@gmail.com", "externe", "agent.externe.tchap.gouv.fr", "yes"),
]


@pytest.mark.parametrize(("address", "platform", "server", "invite"), SHIPPED_ROUTES)
def test_the_shipped_file_follows_the_products_guidance(runner, address, platform, server, invite):
    result = runner.invoke(
        args=["domains", "resolve", address, "--file", str(ROOT / "domains.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert f"platform:         {platform}\n" in result.output
    assert f"server:           {server}\n" in result.output
    assert f"requires invite:  {invite}\n" in result.output


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("default: externe", "default: externe\nmirrors: []"), "unknown key 'mirrors'"),
        (("ac-lyon.fr: education", "ac-lyon.fr: educaton"), "ac-lyon.fr (line 11): platform"),
        (("ac-lyon.fr: education", "ac-lyon.fr: education\n  .ac-lyon.fr: agent"),
         ".ac-lyon.fr (line 12): conflicts with ac-lyon.fr"),
        (("ac-lyon.fr: education", "ac-lyon.fr: education\n  AC-Lyon.fr: agent"),
         "AC-Lyon.fr (line 12): conflicts with ac-lyon.fr"),
        (("ac-lyon.fr: education", "ac-lyon.fr: education\n  ac-lyon.fr: agent"),
         "'ac-lyon.fr' (line 12) appears twice"),
        (("ac-lyon.fr: education", "ac_lyon..fr: education"), "ac_lyon..fr (line 11): 'ac_lyon"),
        (("ac-lyon.fr: education", "-ac-lyon.fr: education"), "not a valid domain name"),
        (("default: externe", ""), "default: missing"),
        (("{server: agent.tchap.gouv.fr}", "{server: agent.tchap.gouv.fr, shadow: x}"),
         "agent (line 4): unknown key 'shadow'"),
        (("Jeanne.Exemple@LaPoste.net", "jeanne@"), "jeanne@ (line 13): not a valid email"),
    ],
)  # fmt: skip
def test_invalid_files_are_refused_naming_the_rule(edit, expected):
    found = problems(VALID.replace(*edit))
    assert any(expected in problem for problem in found), found


def test_every_problem_is_reported_at_once():
    text = VALID.replace("ac-lyon.fr: education", "ac-lyon.fr: nowhere").replace(
        "default: externe", "default: ailleurs"
    )
    assert len(problems(text)) == 2


def test_not_yaml():
    [problem] = problems("platforms: [unclosed")
    assert problem.startswith("line 1") or "not valid YAML" in problem


# -- commands ---------------------------------------------------------------


def test_check_summarises(runner, tmp_path):
    path = tmp_path / "domains.yaml"
    path.write_text(VALID)
    result = runner.invoke(args=["domains", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "5 rule(s) on 3 platform(s)" in result.output
    assert "invitation required, default" in result.output


def test_resolve_names_the_rule(runner):
    result = runner.invoke(args=["domains", "resolve", "Agent@Lycee.AC-Versailles.fr"])
    assert result.exit_code == 0, result.output
    assert "agent.externe.tchap.gouv.fr" in result.output and "rule:             default" in (
        result.output
    )
    result = runner.invoke(args=["domains", "resolve", "agent@sg.interieur.gouv.fr"])
    assert "rule:             .interieur.gouv.fr" in result.output
    assert runner.invoke(args=["domains", "resolve", "nope"]).exit_code == 2


def test_diff_counts_the_bindings_that_move(app, client, smtp, runner, tmp_path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(VALID)
    new.write_text(VALID.replace("ac-lyon.fr: education", "ac-lyon.fr: agent"))
    for address in ("a@ac-lyon.fr", "b@ac-lyon.fr", "c@education.gouv.fr"):
        sid = validate_address(client, smtp, address, secret="s")
        body = {"sid": sid, "client_secret": "s", "mxid": "@x:agent.tchap.gouv.fr"}
        assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    result = runner.invoke(args=["domains", "diff", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "ac-lyon.fr: agent.education.tchap.gouv.fr -> agent.tchap.gouv.fr" in result.output
    assert "1 rule(s) change homeserver; 2 bound address(es) move." in result.output


# -- importing Sydent's info.yaml -------------------------------------------

# Addresses on which the import must answer as Sydent's Tchap branch does.
SAMPLE = [
    "jeanne.exemple@laposte.net",
    "consultant.exemple@gmail.com",
    "someone@gmail.com",
    "a@interieur.gouv.fr",
    "a@sg.interieur.gouv.fr",
    "a@ac-versailles.fr",
    "a@lycee.ac-versailles.fr",
    "a@ac-normandie.fr",
    "a@education.gouv.fr",
    "a@dgesco.education.gouv.fr",
    "a@intradef.gouv.fr",
    "a@dga.intradef.gouv.fr",
    "a@gouv.fr",
    "a@culture.gouv.fr",
    "chef.cabinet@elysee.fr",
    "autre@elysee.fr",
    "a@gouv.fr.example.com",
]


def test_import_info_gives_sydents_answers_through_http(runner, tmp_path, make_app):
    output = tmp_path / "domains.yaml"
    result = runner.invoke(args=["domains", "import-info", str(INFO_YAML), "-o", str(output)])
    # One pattern is not a domain rule: reported, and the exit status says so.
    assert result.exit_code == 1
    assert "NOT IMPORTED: pattern [a-z]+\\.[a-z]+@prestataire\\.fr" in result.output
    assert "pattern .*@sg\\.interieur\\.gouv\\.fr: earlier patterns decide" in result.output
    assert "0 difference(s)" in result.output

    client = make_app(DOMAINS_PATH=str(output), INTERNAL_API_SECRET="k").test_client()
    info = INFO_YAML.read_text()
    imported = import_info(info)
    entries, patterns = _sydent_rules(info)
    for address in SAMPLE:
        expected = sydent_target(entries, patterns, address)
        r = client.get(
            f"{V1}/internal-info",
            query_string={"medium": "email", "address": address},
            headers={"Authorization": "Bearer k"},
        )
        answer = r.json
        assert answer["hs"] == expected["hs"], address
        assert answer.get("shadow_hs") == expected.get("shadow_hs"), address
        assert answer["requires_invite"] == expected["requires_invite"], address
    assert imported.differences == []


def _sydent_rules(text):
    import yaml

    section = yaml.safe_load(text)["medium"]["email"]
    patterns = [(p, target) for group in section["patterns"] for p, target in group.items()]
    return section["entries"], patterns


def test_import_reports_what_it_narrows():
    info = """
medium:
  email:
    entries: {}
    patterns:
      - .*@interieur\\.gouv\\.fr: {hs: a.example}
      - .*@(.*\\.|)interieur\\.gouv\\.fr: {hs: b.example}
      - .*@.*\\.gouv\\.fr: {hs: c.example}
      - .*@gouv\\.fr: {hs: d.example}
      - .*@(ac-lyon|ac-paris)\\.fr: {hs: e.example}
      - .*@.*: {hs: z.example, requires_invite: true}
"""
    imported = import_info(info)
    table = imported.table
    assert table.resolve("x@interieur.gouv.fr").platform.server == "a.example"
    assert table.resolve("x@sg.interieur.gouv.fr").platform.server == "b.example"
    assert table.resolve("x@culture.gouv.fr").platform.server == "c.example"
    assert table.resolve("x@gouv.fr").platform.server == "d.example"
    assert any("narrowed to *.interieur.gouv.fr" in note for note in imported.notes)
    assert [s for s in imported.skipped if "ac-lyon" in s]
    assert imported.differences == []


def test_import_without_a_catch_all_needs_a_default():
    info = "medium: {email: {entries: {}, patterns: [{'.*@a\\.fr': {hs: a.example}}]}}"
    with pytest.raises(ValueError, match="--default"):
        import_info(info)
    table = import_info(info, default_server="externe.example").table
    assert table.default.server == "externe.example" and table.default.requires_invite


# -- a running server picks up edits ----------------------------------------


@pytest.fixture
def served(tmp_path):
    """The service under gunicorn with two workers, on an SQLite file and our domains file."""
    domains = tmp_path / "domains.yaml"
    domains.write_text(VALID)
    env = service_env(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        tmp_path,
        DOMAINS_PATH=str(domains),
        DOMAINS_CHECK_SECONDS="0.2",
        DELIVERY_WORKER_ENABLED="false",
    )
    migrate(env)
    with Gunicorn(env, ("-w", "2")) as server:
        yield server.base, domains


def test_hot_reload_on_a_running_server(served):
    base, domains = served

    def answers():
        # Several requests, so that both workers answer.
        return {
            requests.get(f"{base}{V1}/info", params={"address": "x@ac-lyon.fr"}, timeout=5).json()[
                "hs"
            ]
            for _ in range(10)
        }

    assert answers() == {"agent.education.tchap.gouv.fr"}
    domains.write_text(VALID.replace("ac-lyon.fr: education", "ac-lyon.fr: agent"))
    deadline = time.monotonic() + 5  # "within a few seconds"
    while answers() != {"agent.tchap.gouv.fr"}:
        assert time.monotonic() < deadline, "the edit was not picked up"
        time.sleep(0.2)
    # A broken edit: every worker keeps the last good rules and says why.
    domains.write_text(VALID.replace("ac-lyon.fr: education", "ac-lyon.fr: nowhere"))
    time.sleep(1)
    assert answers() == {"agent.tchap.gouv.fr"}
    health = requests.get(f"{base}/health", timeout=5).json()
    assert health["domains"]["ok"] is False and "nowhere" in health["domains"]["error"]
