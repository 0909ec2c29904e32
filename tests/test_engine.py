"""The engine facade: backends are plugins, verbs take and return plain data, caches are bounded."""

import json
from types import SimpleNamespace

import pluggy
import pytest

from core import engine
from core.backends import local
from core.errors import UserError
from core.registry import Registry, use_registry

hookimpl = pluggy.HookimplMarker("tunelab")


class Recorder(engine.Engine):
    name = "recorder"

    def __init__(self, settings):
        self.settings = settings

    def health(self):
        return {"ok": True, "backend": self.name, "where": self.settings.get("address", "?"), "detail": ""}


class BackendPlugin:
    created = []

    @hookimpl
    def register_backends(self, register):
        def create(settings):
            BackendPlugin.created.append(settings)
            return Recorder(settings)

        register(SimpleNamespace(name="recorder", description="records its settings", params=[], create=create))


@pytest.fixture
def with_backend(monkeypatch):
    registry = Registry(load_external=False, extra_plugins=[(BackendPlugin(), "recorder-plugin")])
    engine.reset_engines()
    with use_registry(registry):
        yield registry
    engine.reset_engines()


def test_a_plugin_backend_is_chosen_by_name_with_its_settings(with_backend, monkeypatch):
    monkeypatch.setenv("TUNELAB_BACKEND", "recorder")
    monkeypatch.setenv("TUNELAB_RAY_ADDRESS", "http://box:8265")
    e = engine.get_engine({"token": "from-secrets"})
    assert isinstance(e, Recorder)
    assert e.settings == {"backend": "recorder", "address": "http://box:8265", "token": "from-secrets"}
    assert engine.get_engine({"token": "from-secrets"}) is e  # one engine per setting
    assert with_backend.owner("backends", "recorder") == "recorder-plugin"


def test_environment_wins_over_secrets_and_local_is_the_default(with_backend, monkeypatch):
    monkeypatch.delenv("TUNELAB_BACKEND", raising=False)
    assert engine.backend_settings({"address": "a"})["backend"] == "local"
    monkeypatch.setenv("TUNELAB_RAY_TOKEN", "env")
    assert engine.backend_settings({"token": "secret"})["token"] == "env"
    assert isinstance(engine.get_engine(), local.LocalEngine)


def test_an_unknown_backend_is_one_clear_error(with_backend, monkeypatch):
    monkeypatch.setenv("TUNELAB_BACKEND", "slurm")
    with pytest.raises(UserError, match="'slurm' is not a known backend; use one of .*local.*ray"):
        engine.get_engine()


def test_local_verbs_return_plain_data(tiny_model, registry, runs_dir, monkeypatch):
    monkeypatch.delenv("TUNELAB_BACKEND", raising=False)
    with use_registry(registry):
        e = local.LocalEngine()
        info = e.describe_model(tiny_model)
        toks = e.tokenize(tiny_model, "Hello world")
        dist = e.next_token_distribution(tiny_model, "Hi", "top_k", {"top_k": 5}, top=5)
        text = "".join(e.generate(tiny_model, "Hi", max_new_tokens=3))
        formats = e.data_formats()
        for value in (info, toks, dist, formats, e.health(), e.machine()):
            json.dumps(value)  # could cross a network
    assert info["layers"] == 2 and toks["pieces"] and len(toks["ids"]) == len(toks["pieces"])
    assert isinstance(text, str) and len(dist["tokens"]) == 5
    assert {"alpaca", "messages"} <= {f["name"] for f in formats}


def test_a_run_model_name_needs_the_run_and_its_final_folder(runs_dir):
    e = local.LocalEngine()
    with pytest.raises(UserError, match="no run called 'nope'"):
        e.describe_model("run:nope")
    assert e.find_run("../etc") is None and e.find_run(".hidden") is None


def test_the_model_cache_is_bounded_and_reloads_a_rewritten_folder(tmp_path):
    loads = []
    cache = local.ModelCache(size=2)
    folders = []
    for name in "abc":
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        folders.append(str(folder))
    for f in folders + folders[:1]:
        cache.get(f, lambda p: loads.append(p) or p)
    assert len(cache._items) == 2 and loads == folders + folders[:1]  # 'a' was dropped, then loaded again
    (tmp_path / "c" / "model.safetensors").write_text("new weights")
    cache.get(folders[2], lambda p: loads.append(p) or p)
    assert loads[-1] == folders[2]  # rewritten on disk: loaded anew
    assert cache.peek(folders[2]) == folders[2] and cache.peek(folders[1]) is None  # 'b' was dropped
    assert loads.count(folders[2]) == 2  # peek loads nothing


def test_without_the_engine_a_verb_says_what_to_install(monkeypatch):
    monkeypatch.setattr(engine, "engine_installed", lambda: False)
    with pytest.raises(engine.EngineMissing, match="make setup.*TUNELAB_BACKEND=ray"):
        local.LocalEngine().describe_model("embedded")
    assert local.LocalEngine().health()["ok"] is False
