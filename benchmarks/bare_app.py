"""The floor for bench_small_requests.py: a one-route Flask app answering `{}` to any path.

    gunicorn -c gunicorn.conf.py 'benchmarks.bare_app:create_app()'
"""

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def anything(path: str) -> dict:
        return {}

    return app
