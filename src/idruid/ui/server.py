"""The Flask app behind ``idruid ui``: the page, a job API, and ``serve`` for the command.

Routes: ``GET /`` the editor page; ``GET /api/config`` resolution, limits and the checkpoint's
sampling defaults; ``POST /api/jobs`` ``{"layout", "steps", "cfg"}`` -> 202 ``{"id"}``, 400
``{"errors": [{"field", "message", "box"}]}``, 413 (body over ``max_request_bytes``) or 503 with
``Retry-After`` (queue full); ``GET /api/jobs/<id>`` status and step k of n; ``DELETE
/api/jobs/<id>`` cancels it; ``GET /api/jobs/<id>/image.png`` the result; ``GET /api/health``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path

from . import UI_EXTRA_HINT, UIUnavailable

try:
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import BaseWSGIServer, make_server
except ImportError as err:
    raise UIUnavailable(UI_EXTRA_HINT) from err

from ..layout import MAX_INSTANCES
from .jobs import JobRunner, QueueFull
from .limits import JOB_TIMEOUT, MAX_QUEUE, MAX_REQUEST_BYTES
from .payload import MAX_CFG, MAX_STEPS, FieldError, PayloadError, parse_generate_request

STATIC_DIR = Path(__file__).parent / "static"


def create_app(runner: JobRunner, defaults: dict, max_request_bytes: int = MAX_REQUEST_BYTES) -> Flask:
    """``defaults``: the page's initial ``steps``, ``cfg`` and ``seed``."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def error(field: str, message: str, status: int):
        return jsonify(errors=[FieldError(field, message).to_dict()]), status

    def not_found(job_id: str):
        return error("job", f"no job {job_id!r} (unknown, or forgotten)", 404)

    @app.errorhandler(413)
    def too_large(_):
        return error("request", f"larger than the server's limit of {max_request_bytes} bytes", 413)

    @app.get("/api/health")
    def health():
        held, totals = runner.counts(), dict(runner.totals)
        return jsonify(status="ok", jobs=held, totals=totals, max_pending=runner.max_pending)

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
        except QueueFull as full:
            response, status = error("queue", str(full), 503)
            response.headers["Retry-After"] = str(full.retry_after)
            return response, status
        return jsonify(id=job.id, status_url=f"/api/jobs/{job.id}"), 202

    @app.delete("/api/jobs/<job_id>")
    def cancel(job_id: str):
        job = runner.cancel(job_id)
        if job is None:
            return not_found(job_id)
        return jsonify(id=job.id, status=job.status, cancel_requested=job.cancel_requested)

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


def checkpoint_runner(
    checkpoint: str | None, device: str = "cpu", base: str | None = None, **limits
) -> tuple[JobRunner, dict]:
    """Open a checkpoint of any format (the embedded model when None; ``base``: its base folder)
    as ``idruid generate`` does: sampling settings the page does not ask for (layout fraction,
    shift) come from the checkpoint; ``limits``: JobRunner's ``max_pending`` and ``timeout``."""
    from ..loader import open_model

    model, settings = open_model(checkpoint, base, device)
    runner = JobRunner(model, settings, device=device, **limits)
    return runner, {"steps": settings.steps, "cfg": settings.cfg, "seed": 0}


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(
    checkpoint: str | None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    max_queue: int = MAX_QUEUE,
    job_timeout: float = JOB_TIMEOUT,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    base: str | None = None,
) -> None:
    """Load the model (``base``: its base folder), serve the page until Ctrl+C."""
    if not is_loopback(host):
        print(
            f"idruid ui: warning: listening on {host}, not only this machine: anyone who can reach it "
            "can run jobs on this model (no login, no TLS)",
            file=sys.stderr,
            flush=True,
        )
    sock = listen(host, port)
    try:
        runner, defaults = checkpoint_runner(
            checkpoint, device, base, max_pending=max_queue, timeout=job_timeout
        )
    except BaseException:
        sock.close()
        raise
    server = make_ui_server(create_app(runner, defaults, max_request_bytes), sock)
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
