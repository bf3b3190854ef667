"""``idruid ui`` under load and abuse: a bounded queue (503 + Retry-After), a request-size limit
(413), per-job timeout, cancelling (DELETE), /api/health, the non-loopback warning, and a load
test on 127.0.0.1 (8 clients x 50 posts against a queue of 16)."""

import http.client
import json
import threading
import time

import pytest

from idruid.cli import main
from idruid.ui.jobs import JobRunner

pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
from idruid.ui.server import checkpoint_runner, create_app, is_loopback, listen, make_ui_server  # noqa: E402

LAYOUT = {"prompt": "a red circle", "instances": [{"caption": "a red circle", "box": [0.1, 0.1, 0.5, 0.5]}]}
JOB = {"layout": LAYOUT, "steps": 2, "cfg": 1.0}


@pytest.fixture(scope="module")
def embedded():
    runner, defaults = checkpoint_runner(None)
    runner.close()
    return runner, defaults


class Gate:
    """A step function that blocks every sampling step until ``open()``: jobs stay running."""

    def __init__(self, step_fn):
        self.step_fn, self.event, self.entered = step_fn, threading.Event(), threading.Event()

    def __call__(self, prediction, x_t, t, t_next):
        self.entered.set()
        assert self.event.wait(30), "the test never opened the gate"
        return self.step_fn(prediction, x_t, t, t_next)


def make(embedded, max_request_bytes=64 * 1024, **kwargs):
    base, defaults = embedded
    runner = JobRunner(base.model, base.settings, **kwargs)
    return runner, create_app(runner, defaults, max_request_bytes).test_client()


def wait_status(client, job_id: str, wanted: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = client.get(f"/api/jobs/{job_id}").get_json()
        if report["status"] in wanted:
            return report
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {wanted}: {report}")


def test_a_full_queue_answers_503_with_retry_after_and_recovers(embedded):
    gate = Gate(embedded[0].model.process.step)
    runner, client = make(embedded, max_pending=2, step_fn=gate)
    first, second = (client.post("/api/jobs", json=JOB) for _ in range(2))
    assert first.status_code == second.status_code == 202
    full = client.post("/api/jobs", json=JOB)
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
    assert (
        full.get_json()["errors"][0]["field"] == "queue"
        and "queue is full" in full.get_json()["errors"][0]["message"]
    )
    health = client.get("/api/health").get_json()
    assert health["status"] == "ok" and health["max_pending"] == 2
    assert health["jobs"]["queued"] + health["jobs"]["running"] == 2 and health["totals"]["rejected"] == 1
    gate.event.set()
    for answer in (first, second):
        wait_status(client, answer.get_json()["id"], {"done"})
    assert client.post("/api/jobs", json=JOB).status_code == 202
    runner.close()


def test_a_request_over_the_size_limit_gets_413(embedded):
    runner, client = make(embedded, max_request_bytes=2000)
    big = {**JOB, "layout": {**LAYOUT, "prompt": "x" * 3000}}
    answer = client.post("/api/jobs", data=json.dumps(big), content_type="application/json")
    assert answer.status_code == 413
    assert "larger than the server's limit of 2000 bytes" in answer.get_json()["errors"][0]["message"]
    assert client.post("/api/jobs", json=JOB).status_code == 202
    assert runner.totals["accepted"] == 1
    runner.close()


def test_cancel_a_queued_and_a_running_job(embedded):
    gate = Gate(embedded[0].model.process.step)
    runner, client = make(embedded, step_fn=gate)
    running = client.post("/api/jobs", json={**JOB, "steps": 20}).get_json()["id"]
    assert gate.entered.wait(30)
    queued = client.post("/api/jobs", json=JOB).get_json()["id"]
    answer = client.delete(f"/api/jobs/{queued}")
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled"
    answer = client.delete(f"/api/jobs/{running}")
    assert answer.status_code == 200 and answer.get_json() == {
        "id": running,
        "status": "running",
        "cancel_requested": True,
    }
    gate.event.set()
    report = wait_status(client, running, {"cancelled"})
    assert report["step"] == 1 and report["error"] == "cancelled"  # stopped at its next step
    assert client.get(f"/api/jobs/{queued}").get_json()["step"] == 0  # never sampled
    assert client.delete("/api/jobs/nope").status_code == 404
    assert client.delete(f"/api/jobs/{running}").get_json()["status"] == "cancelled"  # no change once over
    runner.close()


def test_a_job_past_its_timeout_is_stopped(embedded):
    step_fn = embedded[0].model.process.step

    def slow(*args):
        time.sleep(0.05)
        return step_fn(*args)

    runner, client = make(embedded, timeout=0.1, step_fn=slow)
    job = client.post("/api/jobs", json={**JOB, "steps": 100}).get_json()["id"]
    report = wait_status(client, job, {"failed", "done"})
    assert report["status"] == "failed" and "stopped after 0.1 s" in report["error"] and report["step"] < 10
    runner.close()


def test_a_non_loopback_host_is_warned_about(monkeypatch, capsys):
    import idruid.ui.server

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")

    def refuse(host, port):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(idruid.ui.server, "listen", refuse)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0, not only this machine" in err
    assert main(["ui"]) == 2
    assert "warning" not in capsys.readouterr().err
    assert main(["ui", "--max-queue", "0"]) == 2
    assert "--max-queue: must be positive, got 0" in capsys.readouterr().err


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_load_8_clients_50_posts_each_against_a_queue_of_16(embedded):
    """Bounded: 400 posts, about 10 s at most. Every post is answered 202 or 503; status and health
    stay answered within 2 s; every accepted job completes; the jobs held stay within the queue
    plus the finished ones kept; resident memory is measured before and after."""
    base, defaults = embedded
    runner = JobRunner(base.model, base.settings, max_pending=16, keep=16)
    server = make_ui_server(create_app(runner, defaults), listen(port=0))
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = json.dumps(JOB)
    codes: list[int] = []
    accepted: list[str] = []
    latencies: list[float] = []
    monitored: list[int] = []  # status codes of the health and status polls
    held: list[int] = []
    rss_before = _rss_bytes()

    def request(method: str, path: str, data: str | None = None) -> tuple[int, dict, float]:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = json.loads(response.read() or b"{}")
        connection.close()
        return response.status, payload, time.perf_counter() - started

    def client() -> None:
        for _ in range(50):
            status, payload, _ = request("POST", "/api/jobs", body)
            codes.append(status)
            if status == 202:
                accepted.append(payload["id"])
            time.sleep(0.005)

    posting = True

    def monitor() -> None:
        while posting or runner.counts()["queued"] + runner.counts()["running"]:
            status, _, seconds = request("GET", "/api/health")
            monitored.append(status)
            latencies.append(seconds)
            if accepted:
                status, _, seconds = request("GET", f"/api/jobs/{accepted[-1]}")
                monitored.append(status)  # a job may be forgotten (404) once 16 newer ones finished
                latencies.append(seconds)
            held.append(len(runner))
            time.sleep(0.02)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    clients = [threading.Thread(target=client) for _ in range(8)]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    posting = False
    watcher.join(60)
    elapsed = time.monotonic() - started
    rss_after = _rss_bytes()
    server.shutdown()
    runner.close()

    assert len(codes) == 400 and set(codes) <= {202, 503}
    assert codes.count(503) > 0 and len(accepted) == codes.count(202) == runner.totals["accepted"]
    assert runner.totals["done"] == len(accepted) and runner.totals["failed"] == 0
    assert max(held) <= 16 + 16 + 1
    assert monitored and set(monitored) <= {200, 404} and max(latencies) < 2.0
    print(
        f"load: {len(accepted)} accepted, {codes.count(503)} refused in {elapsed:.1f} s; "
        f"health/status max {max(latencies) * 1000:.0f} ms; jobs held max {max(held)}; "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )
    assert rss_after - rss_before < 200 * 2**20
