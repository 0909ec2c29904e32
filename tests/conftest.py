"""Shared fixtures. Tests are offline (HF_HUB_OFFLINE=1) and use a tiny random model where they can."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The example tracking plugin (examples/tunelab-tracking) is installed by make setup: its own tests switch it on.
os.environ["TUNELAB_TRACKING"] = "off"
os.environ["TUNELAB_STANDBY"] = "0"  # no worker started ahead for every engine; tests/test_standby.py has its own
# The embedded model's converted copy is cached across test sessions (the conversion takes ~25 s).
os.environ.setdefault("TUNELAB_HOME", str(Path.home() / ".cache" / "tunelab"))

REPO = Path(__file__).resolve().parent.parent
REAL_WORLD = REPO / "data" / "real-world"  # shipped in the repository (see its README for licences)


@pytest.fixture(scope="session")
def embedded_dir():
    from tunelab.core import models

    return models.ensure_embedded()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from tunelab.core import models

    return models.load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_dir):
    """A folder with a two-layer random Llama and the embedded tokenizer."""
    from tunelab.core import models

    return models.make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model):
    """``(model, tokenizer)`` of the tiny random model, loaded once."""
    from tunelab.core.models import load_model

    return load_model(tiny_model)


@pytest.fixture(scope="session")
def registry():
    """A registry with the built-in plugins only (no entry points, no plugins folder)."""
    from tunelab.core.registry import Registry

    return Registry(load_external=False)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def chat_file(tmp_path):
    """A small alpaca file: 24 short examples."""
    import json

    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
            for a in range(6) for b in range(4)]
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def write(tmp_path):
    """write(name, text or bytes) -> path, for malformed-input tests."""

    def _write(name, content):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write
