"""The plugin registry: discovery, validation, isolation, listing, settings."""

import importlib.metadata
import inspect
import json
import textwrap
import types

import pluggy
import pytest

from tunelab.core import hookspecs, registry
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry, coerce_param, resolve_params

hookimpl = pluggy.HookimplMarker("tunelab")

BUILTIN_FORMATS = ["alpaca", "sharegpt", "messages", "csv", "text", "input_output"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No plugin settings from the machine running the tests leak in."""
    for var in ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    registry.reset_registry()
    yield
    registry.reset_registry()


def fmt(name, **overrides):
    """A minimal valid data format, as a third party would write it (no core import)."""
    attrs = dict(name=name, description=f"The {name} format.", extensions=[".x"], params=[],
                 sniff=lambda path, head: False, load=lambda path: [])
    attrs.update(overrides)
    return types.SimpleNamespace(**attrs)


def plugin_registering(*objects, kind="data_formats"):
    class Plugin:
        pass

    def hook(register):
        for obj in objects:
            register(obj)

    setattr(Plugin, f"register_{kind}", staticmethod(hookimpl(hook)))
    return Plugin()


# -- built-ins -------------------------------------------------------------------------------
def test_builtins_load_and_contribute_exactly_the_six_formats():
    reg = Registry(load_external=False)
    assert list(reg.items("data_formats")) == BUILTIN_FORMATS
    by_name = {p["name"]: p for p in reg.listing()}
    assert by_name["formats"]["source"] == "builtin"
    assert by_name["formats"]["status"] == "loaded"
    assert by_name["formats"]["error"] is None
    assert by_name["formats"]["contributes"]["data_formats"] == BUILTIN_FORMATS
    assert by_name["formats"]["hooks"] == ["register_data_formats"]
    assert all(p["status"] == "loaded" for p in reg.listing() if p["source"] == "builtin")
    for name in BUILTIN_FORMATS:
        assert reg.owner("data_formats", name) == "formats"


def test_unknown_name_lists_what_is_installed():
    reg = Registry(load_external=False)
    with pytest.raises(UserError, match=r"unknown data format 'yaml'; installed: alpaca, sharegpt"):
        reg.get("data_formats", "yaml")


def test_every_hook_is_documented():
    specs = [(n, f) for n, f in vars(hookspecs).items() if hasattr(f, "tunelab_spec")]
    assert {"register_data_formats", "register_samplers", "register_evaluators", "on_train_start", "on_log",
            "on_evaluate", "on_train_end"} <= {n for n, _ in specs}
    undocumented = [n for n, f in specs if len(inspect.getdoc(f) or "") < 20]
    assert not undocumented, f"hooks without a docstring: {undocumented}"


# -- third-party plugins ---------------------------------------------------------------------
def test_third_party_plugin_contributes():
    plugin = plugin_registering(fmt("yaml_chat"))
    reg = Registry(load_external=False, extra_plugins=[(plugin, "yaml-plugin")])
    assert "yaml_chat" in reg.items("data_formats")
    assert list(reg.items("data_formats"))[:len(BUILTIN_FORMATS)] == BUILTIN_FORMATS  # built-ins come first
    info = {p["name"]: p for p in reg.listing()}["yaml-plugin"]
    assert info["status"] == "loaded" and info["contributes"]["data_formats"] == ["yaml_chat"]
    assert reg.owner("data_formats", "yaml_chat") == "yaml-plugin"


def test_format_name_clash_keeps_the_builtin_and_records_it():
    impostor = fmt("alpaca", description="Not the real one.")
    plugin = plugin_registering(impostor, fmt("own_format"))
    reg = Registry(load_external=False, extra_plugins=[(plugin, "impostor")])
    assert reg.get("data_formats", "alpaca") is not impostor
    assert reg.owner("data_formats", "alpaca") == "formats"
    assert "own_format" in reg.items("data_formats")  # the rest of the plugin still works
    info = {p["name"]: p for p in reg.listing()}["impostor"]
    assert info["status"] == "loaded"
    assert any("alpaca" in c and "formats" in c for c in info["clashes"])
    assert info["contributes"]["data_formats"] == ["own_format"]


def test_plugin_named_like_a_builtin_does_not_take_its_name():
    plugin = plugin_registering(fmt("own_format"))
    reg = Registry(load_external=False, extra_plugins=[(plugin, "formats")])
    by_name = {p["name"]: p for p in reg.listing()}
    assert by_name["formats"]["source"] == "builtin"
    assert by_name["formats"]["contributes"]["data_formats"] == BUILTIN_FORMATS
    renamed = [p for p in reg.listing() if p["name"] != "formats" and p["name"].startswith("formats")]
    assert len(renamed) == 1 and renamed[0]["clashes"]


def test_plugin_class_needs_nothing_from_core():
    # A plugin written only against pluggy: an object with decorated methods.
    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register(types.SimpleNamespace(name="my_sampler", description="d", params=[],
                                           generation_kwargs=lambda **p: {"do_sample": False}))

    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "mine")])
    assert "my_sampler" in reg.items("samplers")


@pytest.mark.parametrize("bad, problem", [
    (fmt("Bad Name"), "invalid 'name'"),
    (fmt("noload", load=None), "'load'"),
    (types.SimpleNamespace(name="noload", description="d", extensions=[], params=[], sniff=lambda p, h: 0),
     "missing 'load'"),
    (fmt("badparams", params=[{"name": "k", "type": "complex", "default": 1}]), "'type' must be one of"),
    (fmt("badparams", params={"k": 1}), "params must be a list"),
    (fmt("badparams", params=[{"name": "k", "type": "int"}]), "'default' is missing"),
    (fmt("badparams", params=[{"name": "k", "type": "int", "default": 50, "max": 10}]), "out of range"),
    (fmt("badparams", params=[{"name": "k", "type": "choice", "default": "a"}]), "'choices'"),
    (fmt("nodesc", description=None), "'description'"),
])
def test_malformed_contribution_is_recorded_and_skipped(bad, problem):
    reg = Registry(load_external=False, extra_plugins=[(plugin_registering(bad), "broken")])
    info = {p["name"]: p for p in reg.listing()}["broken"]
    assert info["status"] == "failed"
    assert problem in info["error"]
    assert "register_data_formats" in info["error"]
    assert list(reg.items("data_formats")) == BUILTIN_FORMATS


def test_strict_mode_reraises(monkeypatch):
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")
    with pytest.raises(ValueError, match="invalid 'name'"):
        Registry(load_external=False, extra_plugins=[(plugin_registering(fmt("Bad Name")), "broken")])


def test_misspelled_hook_is_a_validation_failure():
    class Plugin:
        @hookimpl
        def register_data_format(self, register):  # missing the final s
            pass

    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "typo")])
    info = {p["name"]: p for p in reg.listing()}["typo"]
    assert info["status"] == "failed"
    assert "register_data_format" in info["error"] and "spelling" in info["error"]


def test_hookimpl_with_wrong_arguments_fails_and_is_not_called():
    calls = []

    class Plugin:
        @hookimpl
        def on_log(self, run, metrics):
            calls.append("on_log")

        @hookimpl
        def register_data_formats(self, registrar):  # not the spec's argument name
            calls.append("register")

    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "wrongargs")])
    info = {p["name"]: p for p in reg.listing()}["wrongargs"]
    assert info["status"] == "failed" and "registrar" in info["error"]
    reg.call("on_log", run={}, metrics={})
    assert calls == []  # a plugin that failed to register is not half-registered


# -- a plugins folder --------------------------------------------------------------------------
GOOD = """
import types
import pluggy
hookimpl = pluggy.HookimplMarker("tunelab")
__version__ = "1.2.3"

@hookimpl
def register_data_formats(register):
    register(types.SimpleNamespace(name="good_format", description="Good.", extensions=[".good"], params=[],
                                   sniff=lambda path, head: path.endswith(".good"), load=lambda path: None))
"""
MALFORMED = """
import types
import pluggy
hookimpl = pluggy.HookimplMarker("tunelab")

@hookimpl
def register_{kind}(register):
    register({obj})
"""
RAISING = """
import pluggy
hookimpl = pluggy.HookimplMarker("tunelab")

@hookimpl
def register_evaluators(register):
    raise RuntimeError("evaluator set-up exploded")
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    files = {
        "good.py": GOOD,
        "broken_import.py": "import package_that_does_not_exist_anywhere\n",
        "syntax.py": "def oops(:\n",
        "bad_name.py": MALFORMED.format(kind="data_formats", obj=(
            "types.SimpleNamespace(name='Bad Name!', description='d', extensions=[], params=[], "
            "sniff=lambda p, h: False, load=lambda p: None)")),
        "missing_load.py": MALFORMED.format(kind="data_formats", obj=(
            "types.SimpleNamespace(name='no_load', description='d', extensions=[], params=[], "
            "sniff=lambda p, h: False)")),
        "bad_params.py": MALFORMED.format(kind="samplers", obj=(
            "types.SimpleNamespace(name='bad_params', description='d', generation_kwargs=lambda **p: {}, "
            "params=[{'name': 'temperature', 'type': 'float'}])")),
        "raising.py": RAISING,
        "_private.py": "raise SystemExit('must not be imported')\n",
    }
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.setenv("TUNELAB_PLUGINS_DIR", str(folder))
    return folder


def test_plugin_dir_isolates_each_failure(plugin_dir):
    reg = Registry()
    by_name = {p["name"]: p for p in reg.listing()}
    assert "_private" not in by_name
    good = by_name["good"]
    assert (good["status"], good["source"], good["error"]) == ("loaded", "dir", None)
    assert good["contributes"]["data_formats"] == ["good_format"]
    assert good["version"] == "1.2.3"
    assert "good_format" in reg.items("data_formats")
    expected = {
        "broken_import": "package_that_does_not_exist_anywhere",
        "syntax": "SyntaxError",
        "bad_name": "invalid 'name' 'Bad Name!'",
        "missing_load": "missing 'load'",
        "bad_params": "'default' is missing",
        "raising": "evaluator set-up exploded",
    }
    for name, problem in expected.items():
        info = by_name[name]
        assert info["status"] == "failed", name
        assert problem in info["error"], (name, info["error"])
        assert info["source"] == "dir"
    # everything else still works
    assert list(reg.items("data_formats"))[:len(BUILTIN_FORMATS)] == BUILTIN_FORMATS
    assert "no_load" not in reg.items("data_formats")
    assert "bad_params" not in reg.items("samplers")
    assert all(p["status"] == "loaded" for p in reg.listing() if p["source"] == "builtin")


def test_listing_puts_builtins_first_and_is_json(plugin_dir):
    listing = Registry().listing()
    sources = [p["source"] for p in listing]
    assert sources == sorted(sources, key=["builtin", "entrypoint", "dir"].index)
    for p in listing:
        assert set(p) >= {"name", "version", "source", "status", "error", "hooks", "contributes"}
        assert set(p["contributes"]) == {"data_formats", "samplers", "evaluators", "backends"}
    json.dumps(listing)


def test_strict_plugins_reraises_import_errors(plugin_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")
    with pytest.raises((ImportError, SyntaxError, ValueError, RuntimeError)):
        Registry()


def test_empty_load_plugins_means_builtins_only(plugin_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_LOAD_PLUGINS", "")
    reg = Registry()
    assert list(reg.items("data_formats")) == BUILTIN_FORMATS
    dir_plugins = [p for p in reg.listing() if p["source"] == "dir"]
    assert {p["name"] for p in dir_plugins} >= {"good", "broken_import", "raising"}
    assert all(p["status"] == "disabled" for p in dir_plugins)


def test_load_plugins_is_an_allow_list(plugin_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_LOAD_PLUGINS", "good, raising")
    reg = Registry()
    by_name = {p["name"]: p for p in reg.listing()}
    assert by_name["good"]["status"] == "loaded"
    assert by_name["raising"]["status"] == "failed"
    assert by_name["broken_import"]["status"] == "disabled"
    # strict mode does not trip over a plugin that was never loaded
    monkeypatch.setenv("TUNELAB_LOAD_PLUGINS", "good")
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")
    assert "good_format" in Registry().items("data_formats")


# -- entry points -----------------------------------------------------------------------------
class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None, version="0.3.0"):
        self.name, self._obj, self._error = name, obj, error
        self.dist = types.SimpleNamespace(version=version)

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_entry_points_are_discovered(monkeypatch):
    good = plugin_registering(fmt("ep_format"))
    eps = [FakeEntryPoint("tunelab-ep", good), FakeEntryPoint("ep-broken", error=ImportError("no module x"))]
    seen = {}

    def entry_points(group=None, **kw):
        seen["group"] = group
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    reg = Registry()
    assert seen["group"] == "tunelab"
    by_name = {p["name"]: p for p in reg.listing()}
    assert by_name["tunelab-ep"]["source"] == "entrypoint"
    assert by_name["tunelab-ep"]["version"] == "0.3.0"
    assert by_name["tunelab-ep"]["contributes"]["data_formats"] == ["ep_format"]
    assert by_name["ep-broken"]["status"] == "failed" and "no module x" in by_name["ep-broken"]["error"]
    assert "ep_format" in reg.items("data_formats")


def test_entry_points_respect_the_allow_list(monkeypatch):
    loaded = []

    class Watched(FakeEntryPoint):
        def load(self):
            loaded.append(self.name)
            return super().load()

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [Watched("ep", plugin_registering(fmt("ep_format")))])
    monkeypatch.setenv("TUNELAB_LOAD_PLUGINS", "")
    reg = Registry()
    assert loaded == []  # not even imported
    assert {p["name"]: p for p in reg.listing()}["ep"]["status"] == "disabled"


# -- lifecycle hooks --------------------------------------------------------------------------
def test_call_isolates_a_raising_plugin():
    seen = []

    class Raising:
        @hookimpl
        def on_log(self, run, metrics):
            raise RuntimeError("plugin bug")

    class Listening:
        @hookimpl
        def on_log(self, run, metrics):
            seen.append(metrics["step"])
            return "ok"

    reg = Registry(load_external=False, extra_plugins=[(Listening(), "listening"), (Raising(), "raising")])
    errors = []
    results = reg.call("on_log", on_error=lambda name, exc: errors.append((name, str(exc))),
                       run={"run_dir": "x"}, metrics={"step": 3})
    assert seen == [3] and results == ["ok"]
    assert errors == [("raising", "plugin bug")]


def test_call_passes_only_the_arguments_a_hook_takes():
    got = []

    class EndOnly:
        @hookimpl
        def on_train_end(self, result):  # pluggy lets an implementation take a subset
            got.append(result["state"])

    reg = Registry(load_external=False, extra_plugins=[(EndOnly(), "end")])
    reg.call("on_train_end", run={}, result={"state": "finished"})
    assert got == ["finished"]


def test_call_strict_reraises(monkeypatch):
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")

    class Raising:
        @hookimpl
        def on_train_start(self, run):
            raise RuntimeError("boom")

    reg = Registry(load_external=False, extra_plugins=[(Raising(), "raising")])
    with pytest.raises(RuntimeError, match="boom"):
        reg.call("on_train_start", run={})


# -- params -------------------------------------------------------------------------------------
SPECS = [
    {"name": "temperature", "type": "float", "default": 0.7, "min": 0.05, "max": 2.0, "help": "h"},
    {"name": "top_k", "type": "int", "default": 50, "min": 1, "max": 1000},
    {"name": "greedy", "type": "bool", "default": False},
    {"name": "column", "type": "str", "default": "prompt"},
    {"name": "mode", "type": "choice", "default": "line", "choices": ["line", "paragraph"]},
    {"name": "beams", "type": "choice", "default": 2, "choices": [1, 2, 4]},
]


def test_resolve_params_defaults_and_coercion_from_strings():
    assert resolve_params(SPECS, None) == {"temperature": 0.7, "top_k": 50, "greedy": False, "column": "prompt",
                                           "mode": "line", "beams": 2}
    got = resolve_params(SPECS, {"temperature": "1.5", "top_k": "7", "greedy": "true", "column": "q",
                                 "mode": "paragraph", "beams": "4"})
    assert got == {"temperature": 1.5, "top_k": 7, "greedy": True, "column": "q", "mode": "paragraph", "beams": 4}
    assert isinstance(got["top_k"], int) and isinstance(got["beams"], int)


@pytest.mark.parametrize("value, expected", [("yes", True), ("0", False), ("False", False), (True, True)])
def test_coerce_bool(value, expected):
    assert coerce_param(SPECS[2], value) is expected


@pytest.mark.parametrize("name, value, problem", [
    ("temperature", "hot", "must be float"),
    ("temperature", "5", r"out of range \[0.05, 2.0\]"),
    ("temperature", "nan", "must be float"),
    ("top_k", "0", "out of range"),
    ("top_k", "2.5", "must be int"),
    ("top_k", True, "must be int"),
    ("greedy", "maybe", "must be bool"),
    ("mode", "word", "must be one of line, paragraph"),
    ("beams", "3", "must be one of 1, 2, 4"),
])
def test_coerce_param_errors(name, value, problem):
    with pytest.raises(UserError, match=problem) as info:
        resolve_params(SPECS, {name: value})
    assert name in str(info.value)


def test_resolve_params_refuses_unknown_names():
    with pytest.raises(UserError, match=r"unknown parameter\(s\) temp; known: temperature"):
        resolve_params(SPECS, {"temp": 1})


# -- settings ------------------------------------------------------------------------------------
def test_set_enabled_persists_and_disables(plugin_dir, tmp_path):
    registry.set_enabled("good", False)
    saved = json.loads((tmp_path / "home" / "plugins.json").read_text())
    assert saved == {"disabled": ["good"]}
    reg = registry.get_registry()
    assert {p["name"]: p for p in reg.listing()}["good"]["status"] == "disabled"
    assert "good_format" not in reg.items("data_formats")
    registry.set_enabled("good", True)
    assert "good_format" in registry.get_registry().items("data_formats")
    assert json.loads((tmp_path / "home" / "plugins.json").read_text()) == {"disabled": []}


@pytest.mark.parametrize("name", ["formats", "samplers", "evaluators"])
def test_builtins_cannot_be_disabled(name, tmp_path):
    with pytest.raises(UserError, match="built-in"):
        registry.set_enabled(name, False)
    assert not (tmp_path / "home" / "plugins.json").exists()


def test_corrupt_settings_file_is_ignored(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "plugins.json").write_text("{not json")
    assert registry.read_disabled() == set()
    assert list(Registry(load_external=False).items("data_formats")) == BUILTIN_FORMATS


def test_get_registry_is_cached_and_reset():
    first = registry.get_registry()
    assert registry.get_registry() is first
    registry.reset_registry()
    assert registry.get_registry() is not first


def test_disabled_plugin_named_like_a_builtin_keeps_both_entries(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "formats.py").write_text("")
    monkeypatch.setenv("TUNELAB_PLUGINS_DIR", str(folder))
    monkeypatch.setenv("TUNELAB_LOAD_PLUGINS", "")
    listing = Registry().listing()
    assert {(p["source"], p["status"]) for p in listing if p["name"].startswith("formats")} == {
        ("builtin", "loaded"), ("dir", "disabled")}
