"""The worked example package, examples/tunelab-science-extras, installed as a user would (make setup does).

It must be listed by the CLI as an entry-point plugin, work from the CLI (its format, its sampler),
score (its evaluator), show on the dashboard's Plugins page, obey TUNELAB_LOAD_PLUGINS and the
persisted disabled list, and pass its own tests.
"""

import importlib.metadata
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = "tunelab-science-extras"
EXAMPLE = REPO / "examples" / PACKAGE
FIXTURE = EXAMPLE / "tests" / "data" / "photosynthesis.qa.jsonl"

try:
    VERSION = importlib.metadata.version(PACKAGE)
except importlib.metadata.PackageNotFoundError:
    VERSION = None

pytestmark = pytest.mark.skipif(
    VERSION is None, reason=f"{PACKAGE} is not installed in this environment: run `make setup` (or "
                            f"`.venv/bin/python -m pip install --no-deps -e examples/{PACKAGE}`)")


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS")}
    environment.update(HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(tmp_path / "runs"))
    return environment


def cli(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def listed(env) -> dict:
    result = cli(env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_listed_by_the_cli_as_an_entry_point(env):
    info = listed(env)[PACKAGE]
    assert (info["source"], info["status"], info["error"], info["version"]) == ("entrypoint", "loaded", None, VERSION)
    assert info["contributes"] == {"data_formats": ["qa_jsonl"], "samplers": ["typical_p"],
                                   "evaluators": ["readability"], "backends": []}
    assert info["clashes"] == []


def test_its_format_reads_the_fixture_from_the_cli(env):
    result = cli(env, "data", "check", FIXTURE, "--no-tokens", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "qa_jsonl" and report["records"] == 4


def test_its_sampler_generates_from_the_cli(env, tiny_model):
    result = cli(env, "generate", "--model", tiny_model, "--prompt", "Why is the sky blue?", "--sampler", "typical_p",
                 "--param", "typical_p=0.5", "--no-stream", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    bad = cli(env, "generate", "--model", tiny_model, "--prompt", "hi", "--sampler", "typical_p",
              "--param", "typical_p=3", "--no-stream", "--max-new-tokens", "5")
    assert bad.returncode == 2 and "out of range" in bad.stderr  # its param spec is enforced


def test_its_evaluator_scores(tiny_model):
    from tunelab.core import evaluate, models, registry

    registry.reset_registry()
    try:
        reg = registry.get_registry()
        assert reg.owner("evaluators", "readability") == PACKAGE
        samples = evaluate.load_samples(FIXTURE, registry=reg)
        model, tokenizer = models.load_model(tiny_model)
        report = evaluate.evaluate_model(model, tokenizer, samples, evaluators=["readability"], max_new_tokens=5,
                                         evaluator_params={"readability": {"min_words": 1}}, registry=reg)
    finally:
        registry.reset_registry()
    metrics = report["metrics"]["readability"]
    assert "error" not in metrics, metrics
    assert math.isfinite(metrics["reference_readability"])  # the references are real sentences
    assert report["evaluators"]["readability"]["higher_is_better"] is True
    assert len(report["samples"]) == 4 and all("readability" in s["scores"] for s in report["samples"])


def test_load_plugins_empty_and_the_disabled_list_leave_it_out(env, tmp_path):
    env["TUNELAB_LOAD_PLUGINS"] = ""
    assert listed(env)[PACKAGE]["status"] == "disabled"
    refused = cli(env, "data", "check", FIXTURE, "--no-tokens", "--format", "qa_jsonl")
    assert refused.returncode == 2 and "unknown data format 'qa_jsonl'" in refused.stderr
    # The dashboard's switch writes $TUNELAB_HOME/plugins.json; every process (a training worker too) reads it.
    del env["TUNELAB_LOAD_PLUGINS"]
    home = tmp_path / "home"
    home.mkdir()
    (home / "plugins.json").write_text(json.dumps({"disabled": [PACKAGE]}))
    env["TUNELAB_HOME"] = str(home)
    info = listed(env)[PACKAGE]
    assert info["status"] == "disabled" and "disabled in settings" in info["error"]


def test_it_shows_on_the_plugins_page():
    from streamlit.testing.v1 import AppTest

    from tunelab.core import registry
    from dashboard import common

    registry.reset_registry()
    common.plugin_items.clear()  # the pages cache the lists of formats, samplers and evaluators
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.switch_page("dashboard/plugin_shelf.py").run()
    assert not at.exception, [e.value for e in at.exception]
    installed = at.tabs[0]
    header = next(m.value for m in installed.markdown if f"**{PACKAGE}**" in m.value)
    assert "source: `entrypoint`" in header and "loaded" in header
    assert any("`qa_jsonl`" in m.value and "`typical_p`" in m.value and "`readability`" in m.value
               for m in installed.markdown)
    toggle = next(t for t in at.toggle if t.key == f"plugin.enabled.{PACKAGE}")
    assert toggle.value is True and not toggle.disabled  # a community plugin can be switched off
    catalog = at.tabs[1]
    assert any(f"installed {VERSION}" in m.value for m in catalog.markdown)
    assert not [b for b in catalog.button if b.label == f"Install {PACKAGE}"]  # installed: nothing to install


def test_its_own_tests_pass():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
