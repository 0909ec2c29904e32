"""In headless Chromium: values refused beside their boxes, the runs table live, delete asked first, and the
export fallback after a failed check. Screenshots go to ``test-artifacts/issue22/`` (kept out of git).

The runs are made on disk before the browser looks (no training here): a finished run whose model q8_0
cannot carry (see tests/test_export_fallback.py), a finished one to delete, and a 'running' one whose
worker this test process stands in for, its status advanced by hand to watch the table follow.
"""

import os
from pathlib import Path

import pytest

from tunelab.core import runs
from test_e2e import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: F401
from test_export import small_model  # noqa: F401 - the fixture
from test_export_fallback import outlier_run  # noqa: F401 - the fixture
from test_run_management import make_run
from helpers import streamlit_server

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-artifacts" / "issue22"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture
def runs_root(tmp_path, outlier_run):  # noqa: F811
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(outlier_run, root / "outliers")
    make_run(root, "old-try", size=2_000_000)
    make_run(root, "busy", state="running", step=0, total=12, pid=os.getpid())
    return root


@pytest.fixture
def server(tmp_path, runs_root):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(runs_root), TOKENIZERS_PARALLELISM="false",
               TUNELAB_STANDBY="0")
    with streamlit_server(port, env, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_refused_values_live_runs_delete_and_export_fallback(server, browser, runs_root):
    from playwright.sync_api import expect
    # Playwright's expect waits 5 s by default: a busy 2-core machine (CI) needs longer for a rerun to paint
    expect.set_options(timeout=60_000)

    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)

    def idle():
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=120_000)

    def shot(name, locator=None):
        """The part of the page that changed (a small PNG), or the window."""
        idle()
        page.wait_for_timeout(400)
        (locator or page).screenshot(path=str(SHOTS / f"{name}.png"))

    def block_of(locator):
        """The Streamlit block (a bordered container, or the fragment) that holds ``locator`` directly."""
        return locator.first.locator("xpath=ancestor::div[@data-testid='stVerticalBlock'][1]")

    def go(link, heading):
        page.get_by_role("link", name=link).first.click()
        expect(page.get_by_role("heading", name=heading).first).to_be_visible(timeout=120_000)
        idle()

    def type_into(label, value):
        box = page.get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Enter")
        idle()

    page.goto(server)
    expect(page.get_by_role("heading", name="TuneLab")).to_be_visible()
    idle()

    # 3 · Set up training: epochs 0 is refused beside its box, with the reason; a cut is warned about.
    go("3 · Set up training", "How much, how long")
    type_into("epochs", 0)
    refusal = page.get_by_text("Not used: epochs = 0.0 is out of range")
    expect(refusal).to_be_visible()
    expect(page.get_by_text("The run keeps epochs = 2.0")).to_be_visible()
    shot("set-up-refused", block_of(page.get_by_role("heading", name="How much, how long")))
    type_into("max_steps", 99999999999)
    expect(page.get_by_text("max_steps = 99999999999 is out of range")).to_be_visible()
    type_into("max_steps", 0)
    type_into("epochs", 2)

    # 4 · Fine-tune: the runs table, live; the 'running' run moves on while the page is open.
    page.goto(f"{server}/fine_tune?run=busy")
    expect(page.get_by_role("heading", name="Your runs")).to_be_visible(timeout=120_000)
    step_metric = page.get_by_test_id("stMetric").filter(has_text="Step").first
    expect(step_metric).to_contain_text("0 / 12")
    runs.write_status(runs_root / "busy", step=3)  # what its worker would write after step 3
    runs.append_metrics(runs_root / "busy", {"step": 3, "loss": 2.5, "tokens_per_s": 100.0, "elapsed_s": 9.0})
    expect(step_metric).to_contain_text("3 / 12", timeout=15_000)  # polled, no reload
    table = page.get_by_test_id("stDataFrame").first
    expect(page.get_by_text("3 runs,")).to_be_visible()
    table.scroll_into_view_if_needed()
    shot("fine-tune-runs-live", block_of(table))

    # Delete a finished run: asked first, then gone. Deleting the busy one is refused.
    picker = page.get_by_label("Look at a run")
    picker.click()
    page.get_by_role("option", name="old-try").click()
    idle()
    page.get_by_role("button", name="Delete…").click()
    question = page.get_by_text("Delete run `old-try`").or_(page.get_by_text("Delete run old-try"))
    expect(question.first).to_be_visible()
    expect(page.get_by_text("cannot be undone")).to_be_visible()
    shot("fine-tune-delete-asked", block_of(table))
    page.get_by_role("button", name="Yes, delete").click()
    expect(page.get_by_text("2 runs,")).to_be_visible(timeout=30_000)
    assert not (runs_root / "old-try").exists()
    picker = page.get_by_label("Look at a run")
    picker.click()
    page.get_by_role("option", name="busy").click()
    idle()
    page.get_by_role("button", name="Delete…").click()
    expect(page.get_by_text("is running: stop it first")).to_be_visible()
    assert (runs_root / "busy").is_dir()
    runs.write_status(runs_root / "busy", state="stopped")  # the page stops polling once it sees it

    # Export: q8_0 fails its check; the page shows the figure and offers f16 or keeping the file.
    go("Use your model elsewhere", "Use your model elsewhere")
    page.get_by_test_id("stRadio").get_by_text("q8_0", exact=True).first.click()
    idle()
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.get_by_text("did not pass the read-back check")).to_be_visible(timeout=180_000)
    expect(page.get_by_test_id("stProgress")).to_have_count(0)  # no bar frozen above the error
    expect(page.get_by_role("button", name="Export f16 instead")).to_be_visible()
    expect(page.get_by_role("button", name="Keep the q8_0 file anyway")).to_be_visible()
    shot("export-check-failed", block_of(page.get_by_text("did not pass the read-back check")))
    page.get_by_role("button", name="Export f16 instead").click()
    expect(page.get_by_text("The f16 file reads back as the same model")).to_be_visible(timeout=180_000)
    shot("export-f16-instead")
    assert (runs_root / "outliers" / "export" / "f16" / "outliers.gguf").is_file()

    # 6 · Evaluate: 0 samples is refused beside the box, and the held-out file is a pick.
    go("6 · Evaluate", "What to measure")
    type_into("Samples", 0)
    expect(page.get_by_text("Not used: Samples = 0")).to_be_visible()
    expect(page.get_by_role("button", name="Run evaluation")).to_be_disabled()
    shot("evaluate-samples-refused", block_of(page.get_by_role("heading", name="What to measure")))

    # 3 · Set up training again: the time estimate learned from the busy run's step, and how sure it is;
    # the memory chart's title stays readable with Plotly's toolbar showing (the pointer is over the chart).
    go("3 · Set up training", "Memory and time")
    expect(page.get_by_text("How sure: rough: run busy (1 step)")).to_be_visible()
    memory = page.get_by_role("heading", name="Memory and time")
    chart = block_of(memory).locator(".js-plotly-plot").first
    chart.hover()
    expect(block_of(memory).locator(".modebar").first).to_be_visible()
    title = chart.locator(".gtitle").first
    bar, text = block_of(memory).locator(".modebar").first.bounding_box(), title.bounding_box()
    assert text["y"] >= bar["y"] + bar["height"] or text["x"] + text["width"] <= bar["x"], (bar, text)
    shot("set-up-time-estimate-and-chart", block_of(memory))
