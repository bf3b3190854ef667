"""The Flask app behind ``idruid ui``: the page, a job API, and ``serve`` for the command.

Routes: ``GET /`` the editor page; ``GET /api/config`` resolution, limits and the checkpoint's
sampling defaults; ``POST /api/jobs`` ``{"layout", "steps", "cfg"}`` -> 202 ``{"id"}`` or 400
``{"errors": [{"field", "message", "box"}]}``; ``GET /api/jobs/<id>`` status and step k of n;
``GET /api/jobs/<id>/image.png`` the result.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from . import UI_EXTRA_HINT, UIUnavailable

try:
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import BaseWSGIServer, make_server
except ImportError as err:
    raise UIUnavailable(UI_EXTRA_HINT) from err

from ..layout import MAX_INSTANCES
from .jobs import JobRunner
from .payload import MAX_CFG, MAX_STEPS, FieldError, PayloadError, parse_generate_request

STATIC_DIR = Path(__file__).parent / "static"


def create_app(runner: JobRunner, defaults: dict) -> Flask:
    """``defaults``: the page's initial ``steps``, ``cfg`` and ``seed``."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")

    def not_found(job_id: str):
        error = FieldError("job", f"no job {job_id!r} (unknown, or forgotten)")
        return jsonify(errors=[error.to_dict()]), 404

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/api/config")
    def config():
        return jsonify(
            resolution=runner.model.config.resolution,
            max_instances=MAX_INSTANCES,
            max_steps=MAX_STEPS,
            max_cfg=MAX_CFG,
            defaults=defaults,
        )

    @app.post("/api/jobs")
    def submit():
        payload = request.get_json(silent=True)
        try:
            job = runner.submit(parse_generate_request(payload, defaults.get("seed", 0)))
        except PayloadError as err:
            return jsonify(errors=[e.to_dict() for e in err.errors]), 400
        return jsonify(id=job.id, status_url=f"/api/jobs/{job.id}"), 202

    @app.get("/api/jobs/<job_id>")
    def status(job_id: str):
        job = runner.get(job_id)
        if job is None:
            return not_found(job_id)
        report = job.snapshot()
        report["image_url"] = f"/api/jobs/{job.id}/image.png" if job.status == "done" else None
        return jsonify(report)

    @app.get("/api/jobs/<job_id>/image.png")
    def image(job_id: str):
        job = runner.get(job_id)
        if job is None or job.png is None:
            return not_found(job_id)
        return Response(job.png, mimetype="image/png", headers={"Cache-Control": "no-store"})

    return app


def checkpoint_runner(checkpoint: str | None, device: str = "cpu") -> tuple[JobRunner, dict]:
    """Load a checkpoint (the embedded model when None) as ``idruid generate`` does: sampling
    settings the page does not ask for (layout fraction, shift) come from the checkpoint."""
    from ..checkpoint import EMBEDDED_CHECKPOINT, load_checkpoint, read_checkpoint_meta
    from ..cli import SAMPLING_DEFAULTS

    model = load_checkpoint(checkpoint, device=device)
    saved = read_checkpoint_meta(checkpoint or EMBEDDED_CHECKPOINT).get("sampling", {})
    settings = {name: saved.get(name, default) for name, default in SAMPLING_DEFAULTS.items()}
    runner = JobRunner(model, settings["layout_fraction"], settings["shift"], device=device)
    return runner, {"steps": settings["steps"], "cfg": settings["cfg"], "seed": 0}


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind the port now, so that a busy port fails (OSError) before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def make_ui_server(app: Flask, sock: socket.socket) -> BaseWSGIServer:
    """A threaded WSGI server for ``app`` on a socket from ``listen``, which it takes over
    (``server_address`` tells the port)."""
    host, port = sock.getsockname()[:2]
    server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the socket
    return server


def serve(checkpoint: str | None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    """Load the model, serve the page until Ctrl+C."""
    sock = listen(host, port)
    try:
        runner, defaults = checkpoint_runner(checkpoint, device)
    except BaseException:
        sock.close()
        raise
    server = make_ui_server(create_app(runner, defaults), sock)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per progress poll
    model = checkpoint or "the embedded shapes model"
    print(f"idruid ui: http://{host}:{server.server_address[1]}/  ({model}; Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        runner.close()
