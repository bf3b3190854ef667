"""``idruid ui``: request checks, the job API, concurrency, and the page in headless Chromium.

The server tests need Flask (the ``ui`` extra); the browser tests also need Debian's
``chromium`` and the ``playwright`` package (driving that chromium, never a downloaded one).
Every image is checked against ``idruid.sampling.generate`` called directly on the same layout.
"""

import copy
import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idruid.checkpoint import EMBEDDED_CHECKPOINT, read_checkpoint_meta
from idruid.cli import build_parser, main
from idruid.diffusion import euler_step
from idruid.layout import layout_from_dict
from idruid.sampling import SamplingSettings, generate, sample
from idruid.ui.jobs import JobRunner, counting_step
from idruid.ui.payload import FieldError, PayloadError, parse_generate_request

PROMPT = "a photo of a red circle and a blue square"
LAYOUT = {
    "prompt": PROMPT,
    "instances": [
        {"caption": "a red circle", "box": [0.1, 0.1, 0.45, 0.45]},
        {"caption": "a blue square", "box": [0.55, 0.5, 0.9, 0.9]},
    ],
    "seed": 3,
}
OTHER = {
    "prompt": "a green triangle",
    "instances": [{"caption": "a green triangle", "box": [0.2, 0.3, 0.8, 0.9]}],
    "seed": 7,
}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "ui.png"


@pytest.fixture(scope="module")
def embedded():
    """The embedded model, loaded once, as ``idruid ui`` loads it."""
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    from idruid.ui.server import checkpoint_runner

    runner, defaults = checkpoint_runner(None)
    runner.close()  # tests make their own runners around the same model
    return runner, defaults


def make_runner(embedded, **kwargs) -> JobRunner:
    base, _ = embedded
    return JobRunner(base.model, base.settings, **kwargs)


def make_client(embedded, runner):
    from idruid.ui.server import create_app

    return create_app(runner, embedded[1]).test_client()


def reference_image(embedded, layout_dict: dict, steps: int, cfg: float) -> np.ndarray:
    """The image ``generate`` gives for this layout, called directly."""
    runner = embedded[0]
    layout = layout_from_dict(layout_dict)
    return generate(
        runner.model,
        [layout],
        runner.settings.override(steps=steps, cfg=cfg),
        seed=layout.seed,
        progress=False,
    )[0]


def wait_done(client, job_id: str, timeout: float = 20.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        report = client.get(f"/api/jobs/{job_id}").get_json()
        if report["status"] in ("done", "failed"):
            return report
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {report['status']} after {timeout} s")


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def with_instances(instances: list[dict]) -> dict:
    return {"prompt": PROMPT, "instances": instances}


def boxes(n: int) -> list[dict]:
    return [{"caption": f"a red circle {k}", "box": [0.05 * k, 0.1, 0.05 * k + 0.04, 0.3]} for k in range(n)]


# ----------------------------------------------------------------------------- request checks

ZERO_WIDTH = "x1 must be greater than x0 (zero or negative width)"


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (
            with_instances([LAYOUT["instances"][0], {"caption": " ", "box": [0.5, 0.5, 0.9, 0.9]}]),
            [FieldError("caption", "missing or empty", 1)],
        ),
        (
            with_instances([{"caption": "a red circle", "box": [0.3, 0.2, 0.3, 0.6]}]),
            [FieldError("box", ZERO_WIDTH, 0)],
        ),
        (
            with_instances(boxes(12)),
            [FieldError("instances", "has 12 instances, at most 10 are allowed", k) for k in (10, 11)],
        ),
        (
            with_instances([*boxes(2), {"caption": "a cat", "box": [0.1, "0.2", 0.5, 0.5]}]),
            [FieldError("box", "must be a number, got str", 2)],
        ),
        (
            with_instances([{"caption": "a cat", "box": [0.1, 0.2, 0.5, 0.5], "colour": "red"}]),
            [FieldError("colour", "unknown key (allowed: box, caption)", 0)],
        ),
        ({"prompt": "", "instances": boxes(1)}, [FieldError("prompt", "missing or empty")]),
        (with_instances([]), [FieldError("instances", "must hold at least 1 instance")]),
        ({**LAYOUT, "seed": -1}, [FieldError("seed", "must be a non-negative integer")]),
        ("not a layout", [FieldError("layout", "must be a JSON object, got str")]),
    ],
)
def test_layout_errors_point_at_the_box(layout, expected):
    with pytest.raises(PayloadError) as caught:
        parse_generate_request({"layout": layout, "steps": 4, "cfg": 3.0})
    assert caught.value.errors == expected


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"steps": 0, "cfg": 3.0}, "steps"),
        ({"steps": 201, "cfg": 3.0}, "steps"),
        ({"steps": 2.5, "cfg": 3.0}, "steps"),
        ({"steps": True, "cfg": 3.0}, "steps"),
        ({"cfg": 3.0}, "steps"),
        ({"steps": 4, "cfg": "3"}, "cfg"),
        ({"steps": 4, "cfg": -0.5}, "cfg"),
        ({"steps": 4, "cfg": float("nan")}, "cfg"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(PayloadError) as caught:
        parse_generate_request({"layout": LAYOUT, **settings})
    assert [(e.field, e.box) for e in caught.value.errors] == [(field, None)]


def test_page_seed_fills_a_layout_without_one():
    without = {k: v for k, v in LAYOUT.items() if k != "seed"}
    request = parse_generate_request({"layout": without, "steps": 4, "cfg": 1.0}, default_seed=5)
    assert request.layout.seed == 5 and request.steps == 4 and request.cfg == 1.0
    assert parse_generate_request({"layout": LAYOUT, "steps": 4, "cfg": 1}).layout.seed == 3


# ----------------------------------------------------------------------------- jobs


def test_counting_step_leaves_sampling_unchanged(embedded):
    model = embedded[0].model
    layouts = [layout_from_dict(LAYOUT)]
    seen: list[int] = []
    plain = sample(model, layouts, SamplingSettings(steps=5, cfg=3.0))
    settings = SamplingSettings(steps=5, cfg=3.0)
    counted = sample(model, layouts, settings, step_fn=counting_step(seen.append, euler_step))
    assert torch.equal(plain, counted)
    assert seen == [1, 2, 3, 4, 5]



def test_job_reports_step_k_of_n_then_the_image(embedded):
    reached, release = threading.Event(), threading.Event()
    calls = 0

    def gated_step(v_pred, x_t, sigma, sigma_next):  # holds the job inside its third step
        nonlocal calls
        calls += 1
        if calls == 3:
            reached.set()
            assert release.wait(20)
        return euler_step(v_pred, x_t, sigma, sigma_next)

    runner = make_runner(embedded, step_fn=gated_step)
    client = make_client(embedded, runner)
    answer = client.post("/api/jobs", json={"layout": LAYOUT, "steps": 4, "cfg": 3.0})
    assert answer.status_code == 202
    job_id = answer.get_json()["id"]
    assert reached.wait(20)
    report = client.get(f"/api/jobs/{job_id}").get_json()
    assert (report["status"], report["step"], report["steps"], report["image_url"]) == ("running", 2, 4, None)
    assert client.get(f"/api/jobs/{job_id}/image.png").status_code == 404
    release.set()
    report = wait_done(client, job_id)
    assert (report["status"], report["step"], report["size"]) == ("done", 4, [32, 32])
    assert report["layout"] == LAYOUT
    image = png_array(client.get(report["image_url"]).data)
    np.testing.assert_array_equal(image, reference_image(embedded, LAYOUT, 4, 3.0))
    runner.close()


def test_two_concurrent_jobs_keep_their_own_results(embedded):
    active = most = 0
    counter = threading.Lock()

    def watched_step(v_pred, x_t, sigma, sigma_next):  # how many jobs sample at the same time
        nonlocal active, most
        with counter:
            active += 1
            most = max(most, active)
        time.sleep(0.01)
        with counter:
            active -= 1
        return euler_step(v_pred, x_t, sigma, sigma_next)

    runner = make_runner(embedded, workers=2, step_fn=watched_step)
    from idruid.ui.server import create_app

    app = create_app(runner, embedded[1])
    layouts = [LAYOUT, OTHER]
    ids: list[str | None] = [None, None]
    start = threading.Barrier(2)

    def submit(k: int) -> None:
        client = app.test_client()
        start.wait()
        answer = client.post("/api/jobs", json={"layout": layouts[k], "steps": 4, "cfg": 3.0})
        ids[k] = answer.get_json()["id"]

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    client = app.test_client()
    images = []
    for job_id, layout in zip(ids, layouts, strict=True):
        report = wait_done(client, job_id)
        assert report["status"] == "done" and report["layout"] == layout
        images.append(png_array(client.get(report["image_url"]).data))
        np.testing.assert_array_equal(images[-1], reference_image(embedded, layout, 4, 3.0))
    assert ids[0] != ids[1] and not np.array_equal(images[0], images[1])
    assert most == 1  # two workers, but the model lock lets one job sample at a time
    runner.close()


def test_invalid_submission_is_refused_with_400_and_no_job(embedded):
    runner = make_runner(embedded)
    client = make_client(embedded, runner)
    layout = copy.deepcopy(LAYOUT)
    layout["instances"][1]["box"] = [0.5, 0.5, 0.5, 0.9]
    answer = client.post("/api/jobs", json={"layout": layout, "steps": 4, "cfg": 3.0})
    assert answer.status_code == 400
    assert answer.get_json() == {"errors": [{"field": "box", "message": ZERO_WIDTH, "box": 1}]}
    answer = client.post("/api/jobs", data="{not json", content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["errors"][0]["field"] == "request"
    assert len(runner) == 0
    assert client.get("/api/jobs/nope").status_code == 404
    runner.close()


def test_old_finished_jobs_are_forgotten(embedded):
    runner = make_runner(embedded, keep=1)
    client = make_client(embedded, runner)
    ids = []
    for _ in range(3):
        ids.append(client.post("/api/jobs", json={"layout": LAYOUT, "steps": 1, "cfg": 1.0}).get_json()["id"])
        wait_done(client, ids[-1])
    assert client.get(f"/api/jobs/{ids[0]}").status_code == 404
    assert [client.get(f"/api/jobs/{i}").get_json()["status"] for i in ids[1:]] == ["done", "done"]
    runner.close()


def test_config_and_page_are_served(embedded):
    runner = make_runner(embedded)
    client = make_client(embedded, runner)
    saved = read_checkpoint_meta(EMBEDDED_CHECKPOINT)["sampling"]
    config = client.get("/api/config").get_json()
    assert config["defaults"] == {"steps": saved["steps"], "cfg": saved["cfg"], "seed": 0}
    assert (config["resolution"], config["max_instances"]) == (32, 10)
    assert embedded[0].settings == SamplingSettings.from_dict(saved)
    page = client.get("/")
    assert page.status_code == 200 and b'id="layout-canvas"' in page.data
    assert client.get("/static/editor.js").status_code == 200
    runner.close()


@pytest.mark.parametrize("preset", ["tiny", "tiny-flux"])  # the MM-DiT and FLUX backbones
def test_a_trained_checkpoint_brings_its_own_settings(tmp_path, preset):
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    from idruid.checkpoint import load_checkpoint
    from idruid.config import load_config
    from idruid.train import train
    from idruid.ui.server import checkpoint_runner, create_app

    checkpoint = train(load_config(preset, ["steps=1"]), tmp_path / "run", progress=False)
    saved = read_checkpoint_meta(checkpoint)["sampling"]
    runner, defaults = checkpoint_runner(str(checkpoint))
    assert defaults == {"steps": saved["steps"], "cfg": saved["cfg"], "seed": 0}
    assert runner.settings == SamplingSettings.from_dict(saved)
    client = create_app(runner, defaults).test_client()
    job_id = client.post("/api/jobs", json={"layout": LAYOUT, "steps": 2, "cfg": 3.0}).get_json()["id"]
    report = wait_done(client, job_id)
    expected = generate(
        load_checkpoint(checkpoint),
        [layout_from_dict(LAYOUT)],
        SamplingSettings.from_dict(saved).override(steps=2, cfg=3.0),
        seed=3,
        progress=False,
    )[0]
    np.testing.assert_array_equal(png_array(client.get(report["image_url"]).data), expected)
    runner.close()


def test_the_authors_checkpoint_opens_on_an_sd3_folder(tmp_path):
    """The UI opens what ``idruid generate`` opens (idruid.loader.open_model): the authors' folder
    with its base SD3 folder, their sampling settings, and the same image for the same job."""
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    from tiny_models import build_tiny_druid_folder, build_tiny_sd3_folder

    from idruid.loader import open_model
    from idruid.ui.server import checkpoint_runner, create_app

    base = build_tiny_sd3_folder(tmp_path / "sd3")
    folder = build_tiny_druid_folder(tmp_path / "druid")
    runner, defaults = checkpoint_runner(str(folder), base=str(base))
    model, settings = open_model(folder, base)
    assert runner.settings == settings and defaults == {"steps": 50, "cfg": 7.0, "seed": 0}
    assert runner.model.config.backbone == "sd3-druid"
    client = create_app(runner, defaults).test_client()
    job_id = client.post("/api/jobs", json={"layout": LAYOUT, "steps": 2, "cfg": 3.0}).get_json()["id"]
    report = wait_done(client, job_id)
    job = settings.override(steps=2, cfg=3.0)
    expected = generate(model, [layout_from_dict(LAYOUT)], job, seed=3, progress=False)[0]
    np.testing.assert_array_equal(png_array(client.get(report["image_url"]).data), expected)
    runner.close()


# ----------------------------------------------------------------------------- the command


def test_ui_listens_on_localhost_by_default():
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    from idruid.ui.server import listen

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 7860, None)
    with listen(port=0) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"


def test_ui_command_passes_its_flags_to_serve(monkeypatch):
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    import idruid.ui.server

    calls = []
    monkeypatch.setattr(idruid.ui.server, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["ui", "--checkpoint", "runs/x/model", "--port", "8123", "--device", "cuda"]) == 0
    limits = {"max_queue": 16, "job_timeout": 300.0, "max_request_bytes": 65536, "base": None}
    assert calls == [(("runs/x/model",), {"host": "127.0.0.1", "port": 8123, "device": "cuda", **limits})]


def test_ui_on_a_busy_port_fails_before_loading(capsys):
    pytest.importorskip("flask", reason="the ui tests need Flask: pip install 'idruid[ui]'")
    from idruid.ui.server import listen

    with listen(port=0) as sock:
        port = sock.getsockname()[1]
        started = time.perf_counter()
        assert main(["ui", "--port", str(port)]) == 2
    assert time.perf_counter() - started < 2.0
    assert f"--port {port}: Address already in use" in capsys.readouterr().err


def test_ui_without_flask_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flask", None)  # as if Flask were not installed
    monkeypatch.delitem(sys.modules, "idruid.ui.server", raising=False)
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idruid: error: ") and "pip install 'idruid[ui]'" in err


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def live_server(embedded):
    """The app on a free port of 127.0.0.1, served from a thread of this process."""
    from idruid.ui.server import create_app, listen, make_ui_server

    runner = make_runner(embedded)
    server = make_ui_server(create_app(runner, embedded[1]), listen(port=0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", runner
    server.shutdown()
    runner.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module: Debian's, driven by playwright."""
    executable = os.environ.get("IDRUID_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.skip("browser tests need Debian's chromium: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need playwright: pip install playwright (it drives the system chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 940, "height": 760}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.goto(live_server[0])
    opened.wait_for_selector("body[data-ready=true]")
    yield opened
    context.close()
    assert errors == [], f"the page threw: {errors}"


def canvas_geometry(page) -> tuple[float, float, float, float]:
    """Left, top, width and height of the layout canvas's drawing area, in page pixels."""
    return tuple(
        page.evaluate(
            """() => {
                const c = document.getElementById('layout-canvas');
                const r = c.getBoundingClientRect();
                return [r.left + c.clientLeft, r.top + c.clientTop, c.clientWidth, c.clientHeight];
            }"""
        )
    )


def test_draw_caption_generate_and_download(page, live_server, embedded, tmp_path):
    left, top, width, height = canvas_geometry(page)
    for caption, (x0, y0, x1, y1) in zip(
        ("a red circle", "a blue square"), ((0.08, 0.1, 0.45, 0.47), (0.55, 0.5, 0.92, 0.9)), strict=True
    ):
        page.mouse.move(left + x0 * width, top + y0 * height)
        page.mouse.down()
        page.mouse.move(left + x1 * width, top + y1 * height, steps=4)
        page.mouse.up()
        page.keyboard.type(caption)  # drawing a box focuses its caption field
    page.fill("#prompt", PROMPT)
    page.fill("#seed", "3")
    saved_steps = read_checkpoint_meta(EMBEDDED_CHECKPOINT)["sampling"]["steps"]
    assert page.input_value("#steps") == str(saved_steps)  # the checkpoint's default; the tiny model
    page.fill("#cfg", "3")  # samples 20 steps in a fraction of a second, and looks better for it
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('result').dataset.job")
    natural = page.evaluate("() => { const i = document.getElementById('result'); "
                            "return [i.naturalWidth, i.naturalHeight, i.clientWidth]; }")
    assert natural == [32, 32, 384]  # 32x32 shown scaled up
    assert page.inner_text("#status").startswith(f"done: 32\u00d732 image, {saved_steps} steps")

    overlay = page.locator("#overlay")
    assert overlay.is_visible()
    page.uncheck("#show-overlay")
    assert not overlay.is_visible()
    page.check("#show-overlay")
    if os.environ.get("IDRUID_UI_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#download")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["prompt"] == PROMPT and saved["seed"] == 3
    drawn = [[0.08, 0.1, 0.45, 0.47], [0.55, 0.5, 0.92, 0.9]]
    assert [i["caption"] for i in saved["instances"]] == ["a red circle", "a blue square"]
    np.testing.assert_allclose([i["box"] for i in saved["instances"]], drawn, atol=1.5 / width)

    job_id = page.evaluate("() => document.getElementById('result').dataset.job")
    job = live_server[1].get(job_id)
    assert job.layout == layout_from_dict(saved)  # the image is of the layout that was downloaded
    np.testing.assert_array_equal(png_array(job.png), reference_image(embedded, saved, saved_steps, 3.0))


def test_invalid_layout_is_refused_beside_the_box(page, live_server, tmp_path):
    instances = boxes(11)
    instances[2]["box"] = [0.3, 0.1, 0.3, 0.4]  # zero width
    instances[4]["caption"] = ""
    layout = with_instances(instances)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(layout))
    page.set_input_files("#upload", str(path))
    page.wait_for_selector("#file-message:has-text('Loaded bad.json')")
    submitted = len(live_server[1])
    page.click("#generate")
    assert page.inner_text("#status") == "Fix the marked fields first."

    def message(k: int) -> str:
        return page.inner_text(f'.box-row[data-box="{k}"] .box-error')

    assert message(2) == f"box: {ZERO_WIDTH}"
    assert message(4) == "caption: missing or empty"
    with pytest.raises(PayloadError) as caught:  # the page says what the server would say
        parse_generate_request({"layout": layout, "steps": 4, "cfg": 3.0})
    assert [(e.box, e.field) for e in caught.value.errors] == [(10, "instances")]
    assert message(10) == f"instances: {caught.value.errors[0].message}"
    assert [k for k in range(11) if message(k)] == [2, 4, 10]
    assert len(live_server[1]) == submitted  # nothing reached the server

    page.locator('.box-row[data-box="4"] .caption').fill("a red circle")
    assert message(4) == "" and message(2) == f"box: {ZERO_WIDTH}"
    page.click("#download")  # an invalid layout is not saved as idruid JSON
    assert page.inner_text("#file-message").startswith("Not downloaded")
