"""The Flask application class (identity/wsgi.py): JSON answers and hook dispatch."""

import dataclasses
import json
import multiprocessing
from datetime import UTC
from datetime import datetime

import pytest
from flask.json.provider import DefaultJSONProvider

from identity import wsgi
from identity.wsgi import Application


@dataclasses.dataclass
class Point:
    x: int
    label: str


ANSWERS = [
    {},
    {"mxid": "@agent:agent.tchap.gouv.fr", "address": "élodie@exemple.fr", "ts": 1764430000000},
    {"b": [1, 2.5, None, True], "a": {"z": "", "y": "\u2028\\\"<>&'"}},
    {"when": datetime(2026, 11, 29, 17, 0, tzinfo=UTC), "point": Point(1, "p")},
    {"big": 2**70, "negative": -(2**64)},  # beyond orjson's integers: the standard library
    {1: "a", 2: "b"},
]


def standard(app, answer) -> bytes:
    """What Flask's own provider answers."""
    return DefaultJSONProvider.response(app.json, answer).get_data()


@pytest.fixture
def app():
    app = Application(__name__)
    for i, answer in enumerate(ANSWERS):
        app.add_url_rule(f"/{i}", f"answer{i}", lambda answer=answer: answer)
    return app


@pytest.mark.parametrize("index", range(len(ANSWERS)))
def test_json_answers_mean_what_flask_would_answer(app, index):
    r = app.test_client().get(f"/{index}")
    with app.app_context():
        expected = standard(app, ANSWERS[index])
    assert r.mimetype == "application/json"
    assert r.get_data().endswith(b"\n")
    assert json.loads(r.get_data()) == json.loads(expected)
    assert list(json.loads(r.get_data())) == sorted(json.loads(expected))  # sorted keys


@pytest.mark.parametrize("body", [b"{}\n", '{"a": "élodie"}\n'.encode(), b"x" * 70_000])
def test_json_responses_are_werkzeugs_own(app, body):
    """Built without werkzeug's constructor, the same object as it builds: the same
    attributes, headers, status and body, for whichever werkzeug is installed."""
    made = wsgi.json_response(app.response_class, body, "application/json")
    expected = app.response_class(body, mimetype="application/json")
    assert type(made) is type(expected)
    assert vars(made).keys() == vars(expected).keys()
    assert list(made.headers.items()) == list(expected.headers.items())
    assert (made.status, made.status_code, made.get_data()) == (
        expected.status, expected.status_code, expected.get_data())  # fmt: skip
    assert (made.direct_passthrough, made._on_close) == (False, [])
    made.headers["X-Request-ID"] = "abc"  # a response's headers are its own
    assert (
        "X-Request-ID"
        not in wsgi.json_response(app.response_class, body, "application/json").headers
    )


def test_json_answers_are_compact_and_utf8(app):
    body = app.test_client().get("/1").get_data()
    assert b" " not in body.replace("élodie".encode(), b"")
    assert "élodie".encode() in body


def test_debug_answers_stay_indented(app):
    app.debug = True
    assert b'\n  "address"' in app.test_client().get("/1").get_data()


def test_hooks_and_views_are_looked_up_once(app, monkeypatch):
    asked = []
    monkeypatch.setattr(wsgi, "iscoroutinefunction", lambda f: asked.append(f) or False)
    app.before_request(lambda: None)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/0").status_code == 200
    assert len(asked) == len(set(asked)) == 2  # the hook and the view, once each


def test_coroutine_functions_are_still_run_in_sync(app, monkeypatch):
    async def view():
        return {}

    monkeypatch.setattr(Application, "async_to_sync", lambda self, f: lambda: {"sync": True})
    app.add_url_rule("/async", "async", view)
    client = app.test_client()
    assert client.get("/async").json == client.get("/async").json == {"sync": True}


def test_an_unhashable_callable_is_still_called(app):
    class Hook:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self):
            return None

    hook = Hook()
    assert app.ensure_sync(hook) is hook


def _child_prefix(queue) -> None:
    queue.put(wsgi._new_request_id()[:10])


def test_a_forked_process_draws_its_own_request_id_prefix():
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_prefix, args=(queue,))
    child.start()
    prefix = queue.get(timeout=10)
    child.join(10)
    assert prefix != wsgi._new_request_id()[:10]
    first, second = wsgi._new_request_id(), wsgi._new_request_id()
    assert first[:10] == second[:10] and first != second
