"""Languages: complete, compiled catalogues; dates in each language; a catalogue is a language."""

import shutil
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from identity import i18n
from tests.helpers import V1
from tests.helpers import relative

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "translations"


def store_invite(client, **extra):
    body = {
        "medium": "email",
        "address": "claire.martin@partenaire.example",
        "room_id": "!projetx:agent.dinum.tchap.gouv.fr",
        "sender": "@marie.dupont:agent.dinum.tchap.gouv.fr",
        "room_name": "Projet X",
        "sender_display_name": "Marie Dupont",
        **extra,
    }
    r = client.post(f"{V1}/store-invite", json=body)
    assert r.status_code == 200, r.json


def catalogues() -> list[Path]:
    return sorted(TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"))


def test_every_string_shown_is_translated_in_every_catalogue():
    with open(ROOT / "babel.cfg") as f:
        method_map, options_map = parse_mapping_cfg(f)
    shown = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(str(ROOT), method_map, options_map)
    }
    assert len(shown) > 50
    assert [path.parts[-3] for path in catalogues()] == ["en"]
    for path in catalogues():
        with open(path, "rb") as f:
            catalog = read_po(f)
        translated = {m.id for m in catalog if m.id and m.string and not m.fuzzy}
        assert shown - translated == set(), path


def test_the_compiled_catalogues_are_those_of_the_po_files():
    """The .mo files are committed (a fresh clone runs without a compile step):
    `pybabel compile -d translations` after editing a .po."""
    for path in catalogues():
        with open(path, "rb") as f:
            source = {m.id: m.string for m in read_po(f) if m.id and m.string and not m.fuzzy}
        with open(path.with_suffix(".mo"), "rb") as f:
            compiled = {m.id: m.string for m in read_mo(f) if m.id}
        assert compiled == source, path


def test_the_first_of_the_month_in_each_language(client, smtp, clock):
    clock.advance(days=8)  # the 30 days of validity then end on 1 January
    store_invite(client)
    text = smtp.last().text()
    assert "valable jusqu'au 1er janvier 2027" in text
    assert "valid until 1 January 2027" in text


def test_a_new_catalogue_is_a_new_language(make_app, smtp, tmp_path, monkeypatch):
    translations = tmp_path / "translations"
    shutil.copytree(TRANSLATIONS, translations)
    german = Catalog(locale="de")
    german.add("Bonjour,", "Guten Tag,")
    german.add("Version française ci-dessous", "Deutsche Fassung unten")
    german.add("Version française", "Deutsche Fassung")
    german.add("Invitation sur Tchap", "Einladung zu Tchap")
    (translations / "de" / "LC_MESSAGES").mkdir(parents=True)
    with open(translations / "de" / "LC_MESSAGES" / "messages.mo", "wb") as f:
        write_mo(f, german)
    monkeypatch.setattr(i18n, "TRANSLATIONS_DIR", str(translations))
    client = make_app().test_client()

    store_invite(client)
    text = smtp.last().text()
    # Every language in turn, French first; strings not yet translated stay French.
    assert text.index("Bonjour,") < text.index("Guten Tag,") < text.index("Hello,")
    assert "Deutsche Fassung unten" in text and "English version below" in text
    link = next(line for line in text.splitlines() if line.endswith("?lang=de"))
    page = client.get(relative(link))
    assert '<html lang="de">' in page.text and "<title>Einladung zu Tchap" in page.text
    assert 'href="?lang=fr"' in page.text and 'href="?lang=en"' in page.text
    assert 'hreflang="en">English version</a>' in page.text
    bare = relative(link.replace("?lang=de", ""))
    assert '<html lang="de">' in client.get(bare, headers={"Accept-Language": "de"}).text
