"""End to end in a real browser: the dashboard in headless Chromium walks the six lessons.

Starts ``streamlit run streamlit_app.py`` on a free port, then with Playwright: loads the embedded
model, checks the lesson data, starts a 3-step run and watches the loss chart gain points, generates,
evaluates 2 samples. A screenshot of each page goes to ``test-artifacts/e2e/``; the timings (first
paint, warm renders, Start to first loss point) are printed (``pytest -s`` shows them) and written to
``test-artifacts/e2e/timings.json``.
"""

import json
import os
import socket
import time
from pathlib import Path

import pytest
from helpers import streamlit_server

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The dashboard as a learner runs it, with its runs in a temporary folder."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(tmp_path / "runs"), TOKENIZERS_PARALLELISM="false",
               TUNELAB_STANDBY="1")  # as a learner's dashboard: a worker waits, imports done, for Start
    try:
        with streamlit_server(port, env, tmp_path / "streamlit.log") as url:
            yield url
    finally:
        if os.environ.get("TUNELAB_E2E_LOG"):
            print((tmp_path / "streamlit.log").read_text()[-5000:])


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` (or `apt-get install chromium`) installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_walk_the_lessons(server, browser):
    from playwright.sync_api import expect
    # Playwright's expect waits 5 s by default: a busy 2-core machine (CI) needs longer for a rerun to paint
    expect.set_options(timeout=60_000)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.set_default_timeout(60_000)
    timings = {}

    def shot(name):
        """The whole page: Streamlit scrolls inside its main area, so grow the window to the content first."""
        height = page.evaluate("() => document.querySelector('[data-testid=stMain]')?.scrollHeight || 1100")
        page.set_viewport_size({"width": 1440, "height": min(max(height, 1100), 9000)})
        page.wait_for_timeout(500)  # let the charts re-lay out to the new size (cosmetic, not a sync point)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        page.set_viewport_size({"width": 1440, "height": 1100})

    def set_slider(label, right_presses):
        """A Streamlit slider by keyboard: Home (its minimum), then ArrowRight steps."""
        slider = page.get_by_role("slider", name=label)
        slider.focus()
        slider.press("Home")
        for _ in range(right_presses):
            slider.press("ArrowRight")
        idle()

    def heading(text):
        return page.get_by_role("heading", name=text).first

    def go(link, marker):
        """Click a page in the sidebar; seconds until the page's marker heading is visible."""
        t0 = time.perf_counter()
        page.get_by_role("link", name=link).first.click()
        expect(heading(marker)).to_be_visible()
        return time.perf_counter() - t0

    def idle():
        """Wait until the script run is over (Streamlit shows a 'Running…' status while it works)."""
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=120_000)

    # 0 · Welcome: first paint
    t0 = time.perf_counter()
    page.goto(server)
    expect(heading("TuneLab")).to_be_visible()
    timings["welcome_first_paint_s"] = time.perf_counter() - t0
    expect(heading("This machine")).to_be_visible()
    idle()
    shot("0-welcome")

    # 1 · Load a model (embedded) and see its card
    go("1 · Load a model", "1 · Load a model")
    page.get_by_role("button", name="Load model").click()
    expect(heading("Inside the model")).to_be_visible(timeout=180_000)
    expect(page.get_by_text("Architecture")).to_be_visible()
    idle()
    shot("1-load-model")

    # 2 · Prepare data: the lesson set and its report
    go("2 · Prepare data", "2 · Prepare data")
    expect(heading("Check it: the validation report")).to_be_visible(timeout=120_000)
    idle()
    shot("2-prepare-data")

    # 3 · Set up training
    go("3 · Set up training", "3 · Set up training")
    expect(heading("Your run, as a file")).to_be_visible(timeout=120_000)
    idle()
    shot("3-set-up-training")

    # 4 · Fine-tune: a 3-step run on a tiny setting
    go("4 · Fine-tune", "4 · Fine-tune")
    for label, value in (("max_steps (0 = use epochs)", "3"), ("max_length", "64"), ("batch_size", "2")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        idle()
    page.get_by_role("button", name="Start training").click()
    t_start = time.perf_counter()
    page.wait_for_url("**run=*")  # the run id is in the address: a reload reattaches
    # The loss chart is the page's first Plotly figure; wait until its raw-loss trace has a point.
    page.wait_for_function(
        "() => { const p = document.querySelector('.js-plotly-plot');"
        " return p && p.data && p.data[0] && p.data[0].x && p.data[0].x.length >= 1; }",
        timeout=180_000, polling=250)
    timings["start_to_first_loss_point_s"] = time.perf_counter() - t_start
    expect(page.get_by_text("Finished. The trained model")).to_be_visible(timeout=180_000)
    timings["start_to_finished_s"] = time.perf_counter() - t_start
    points = page.evaluate("() => document.querySelector('.js-plotly-plot').data[0].x.length")
    assert points == 3
    run_url = page.url
    # The run ended: the page leaves polling and offers Start again.
    expect(page.get_by_role("button", name="Start training")).to_be_enabled(timeout=30_000)
    idle()
    shot("4-fine-tune")

    # A reload (or a second tab) reattaches to the run from the address.
    second = browser.new_page(viewport={"width": 1200, "height": 900})
    second.goto(run_url)
    expect(second.get_by_text("Finished. The trained model")).to_be_visible(timeout=60_000)
    second.close()

    # 5 · Generate: base and tuned answers stream in
    go("5 · Generate", "5 · Generate")
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=120_000)
    idle()
    set_slider("Max new tokens", 3)  # 8 + 3 x 8 = 32 tokens: enough to see an answer on a CPU
    t0 = time.perf_counter()
    page.get_by_role("button", name="Generate", exact=True).click()
    tuned = page.locator(".st-key-gen_answer_tuned")
    expect(tuned).to_be_visible(timeout=120_000)
    # The hint shown before the first click goes once the run that streamed both answers is over.
    expect(page.get_by_text("Click Generate: the answers stream")).to_have_count(0, timeout=120_000)
    idle()
    timings["generate_both_answers_s"] = time.perf_counter() - t0
    assert page.locator(".st-key-gen_answer_base").inner_text().strip()
    shot("5-generate")

    # 6 · Evaluate: 2 samples
    go("6 · Evaluate", "6 · Evaluate")
    samples = page.get_by_label("Samples", exact=True)
    samples.fill("2")
    samples.press("Enter")
    idle()
    set_slider("Max new tokens per answer", 1)  # 16 + 16 = 32: the point is that results appear
    t0 = time.perf_counter()
    page.get_by_role("button", name="Run evaluation").click()
    expect(heading("Results")).to_be_visible(timeout=300_000)
    idle()
    timings["evaluate_2_samples_s"] = time.perf_counter() - t0
    expect(page.get_by_text("2 samples from")).to_be_visible()
    assert page.locator(".js-plotly-plot").count() >= 3
    shot("6-evaluate")

    # Warm renders: each page again, now that models and data are cached.
    warm = {}
    for link, marker in (("Welcome", "TuneLab"), ("1 · Load a model", "Inside the model"),
                         ("2 · Prepare data", "Check it: the validation report"),
                         ("3 · Set up training", "Your run, as a file"), ("4 · Fine-tune", "The run"),
                         ("5 · Generate", "Base and tuned, side by side"), ("6 · Evaluate", "Results"),
                         ("7 · Memory", "7 · Memory"), ("8 · Plugins", "8 · Plugins")):
        t0 = time.perf_counter()
        page.get_by_role("link", name=link).first.click()
        expect(heading(marker)).to_be_visible()
        idle()
        warm[link] = round(time.perf_counter() - t0, 2)
    timings["warm_render_s"] = warm
    timings = {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()}
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\nE2E timings:", json.dumps(timings, indent=2))
    assert timings["welcome_first_paint_s"] < 30
