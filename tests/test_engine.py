"""The engine facade: backends are plugins, verbs take and return plain data, caches are bounded."""

import json
from types import SimpleNamespace

import pluggy
import pytest

from tunelab.core import engine
from tunelab.core.backends import local
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry, use_registry

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


def test_the_model_cache_drops_old_models_before_a_new_one_would_not_fit_on_the_device(tmp_path):
    free = {"bytes": 1000}
    released = []

    def loader(path):
        free["bytes"] -= 400  # each model takes 400 bytes of the device
        return path

    def release():  # the dropped model's memory goes back to the device
        released.append(1)
        free["bytes"] += 400

    cache = local.ModelCache(size=4, free_bytes=lambda: free["bytes"], release=release)
    folders = [str(tmp_path / n) for n in "abc"]
    for f in folders:
        (tmp_path / f).mkdir(exist_ok=True)
    cache.get(folders[0], loader, need=400)
    cache.get(folders[1], loader, need=400)  # 600 free: fits with the margin (500)
    assert free["bytes"] == 200 and not released
    cache.get(folders[2], loader, need=400)  # 200 free: 'a', the least recent, goes first
    assert len(released) == 1 and cache.peek(folders[0]) is None and cache.peek(folders[1]) == folders[1]


def test_the_device_rule_prefers_the_freest_gpu_and_honours_the_override():
    from tunelab.core import machine

    assert machine.choose_device(None, [], False) == "cpu"
    assert machine.choose_device(None, [], True) == "mps"
    assert machine.choose_device(None, [5, 9, 2], False) == "cuda:1"  # the most free memory
    assert machine.choose_device(None, [5, 9], False, local_rank=2) == "cuda:0"  # a group's rank takes its own
    assert machine.choose_device("cpu", [5, 9], False) == "cpu"
    assert machine.choose_device("cuda:0", [5, 9], False) == "cuda:0"
    with pytest.raises(UserError, match="TUNELAB_DEVICE='cuda' is not a device on this machine; use one of cpu"):
        machine.choose_device("cuda", [], False)


def test_batches_round_up_to_a_few_shapes_on_a_gpu_and_not_on_a_cpu():
    from tunelab.core import data, machine

    examples = [{"input_ids": [5] * n, "labels": [5] * n} for n in (70, 100)]
    assert machine.pad_multiple("cpu") == 1 and machine.pad_multiple("cuda:0") == 64
    assert data.collate(examples, 0)["input_ids"].shape == (2, 100)  # the longest member
    bucketed = data.collate(examples, 0, machine.pad_multiple("cuda:0"), max_length=256)
    assert bucketed["input_ids"].shape == (2, 128) and int(bucketed["attention_mask"].sum()) == 170
    assert (bucketed["labels"][:, 100:] == data.IGNORE_INDEX).all()  # padding is never trained on
    assert data.collate(examples, 0, 64, max_length=110)["input_ids"].shape == (2, 110)  # never past max_length
