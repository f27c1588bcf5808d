"""Languages of pages and mails, through Flask-Babel: French first, English available.

Source strings are written in French (the default locale); each other language is a
gettext catalogue under ``translations/<lang>/LC_MESSAGES``. Adding a language is
adding a catalogue: pages offer it, and mails, which speak every language in turn
(French first), gain a version in it.
"""

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask import current_app
from flask import has_request_context
from flask import render_template
from flask import request
from flask_babel import force_locale
from flask_babel import get_locale
from flask_babel import gettext
from markupsafe import Markup

from identity import dates
from identity.extensions import babel

DEFAULT_LOCALE = "fr"
TRANSLATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "translations")


def init_app(app: Flask) -> None:
    """Bind Flask-Babel: French by default, the page's language chosen per request."""
    babel.init_app(
        app,
        default_locale=DEFAULT_LOCALE,
        default_translation_directories=TRANSLATIONS_DIR,
        locale_selector=select_locale,
    )
    app.context_processor(lambda: {"lang": str(get_locale() or DEFAULT_LOCALE)})
    app.jinja_env.filters["long_date"] = dates.long_date


def languages() -> list[str]:
    """Every language with a catalogue, the default (French) first."""
    cached = current_app.extensions.get("identity.languages")
    if cached is None:
        others = sorted(str(locale) for locale in babel.list_translations())
        cached = [DEFAULT_LOCALE, *(lang for lang in others if lang != DEFAULT_LOCALE)]
        current_app.extensions["identity.languages"] = cached
    return cached


def select_locale() -> str:
    """`?lang=` when given, else the browser's preference, else French."""
    if not has_request_context():
        return DEFAULT_LOCALE  # a command or a worker: nobody's browser to ask
    offered = languages()
    asked = request.args.get("lang", "")
    if asked in offered:
        return asked
    return request.accept_languages.best_match(offered, default=DEFAULT_LOCALE) or DEFAULT_LOCALE


@dataclass(frozen=True)
class Version:
    """A template rendered in one language."""

    lang: str
    text: str


def render_each_language(template: str, **context: Any) -> list[Version]:
    """Render `template` once per language, French first.

    The template gets ``first`` (this is the first version: later ones may introduce
    themselves) and ``lang``. HTML comes back as Markup, ready for a layout.
    """
    versions = []
    for position, lang in enumerate(languages()):
        with force_locale(lang):
            text = render_template(template, first=position == 0, **context)
        # Jinja has escaped the variables of an .html template (autoescape) already.
        safe = Markup(text) if template.endswith(".html") else text  # noqa: S704
        versions.append(Version(lang, safe))
    return versions


def other_languages() -> list[Version]:
    """The languages a page may switch to, each named in itself (``English version``)."""
    current = str(get_locale() or DEFAULT_LOCALE)
    others = []
    for lang in languages():
        if lang != current:
            with force_locale(lang):
                others.append(Version(lang, gettext("Version française")))
    return others


def render_in_default_language(template: str, **context: Any) -> str:
    """Render the layout of a page or mail that speaks every language in French."""
    with force_locale(DEFAULT_LOCALE):
        return render_template(template, **context)


def join_lines(versions: Iterable[Version], separator: str = " / ") -> str:
    """One line from each language's version, repeats and empty versions left out."""
    seen: list[str] = []
    for version in versions:
        line = version.text.strip()
        if line and line not in seen:
            seen.append(line)
    return separator.join(seen)
