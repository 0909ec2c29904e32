"""A plugin whose every callable raises never breaks TuneLab: each failure is one line naming the plugin.

``explosive.py`` (below) contributes a format (sniff, load and iter_records raise), two samplers
(generation_kwargs raises; a logits processor divides by zero), an evaluator, a backend and every
lifecycle hook, all raising. The CLI (plugins, data check, generate, train, eval) and the dashboard
(Generate, Prepare data, Evaluate, Plugins) keep working: the failure is shown as a ``PluginError``
(exit 2 and one line on stderr, or an error box), and the rest carries on. A user's bad data stays
a data error.
"""

import json
import os
import subprocess
import sys
import types

import pluggy
import pytest

from conftest import REPO
from tunelab.core import registry
from tunelab.core.errors import UserError
from tunelab.core.registry import FailureLog, PluginError, Registry
from helpers import open_page

hookimpl = pluggy.HookimplMarker("tunelab")

EXPLOSIVE = '''
from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")


def sniff(path, head):
    raise RuntimeError("sniffer broke")


def load(path):
    return {}["nope"]  # a KeyError: the format's bug, not the user's data


def iter_records(path):
    yield from ()
    raise KeyError("nope")


class DivideByZero:
    def __call__(self, input_ids, scores):
        return scores * (1 / 0)


def explode(*args, **kwargs):
    raise ZeroDivisionError("division by zero")


@hookimpl
def register_data_formats(register):
    register(SimpleNamespace(name="explosive_format", description="Breaks.", extensions=[".jsonl"], params=[],
                             sniff=sniff, load=load, iter_records=iter_records))


@hookimpl
def register_samplers(register):
    register(SimpleNamespace(name="explosive_kwargs", description="Breaks in its settings.", params=[],
                             generation_kwargs=explode))
    register(SimpleNamespace(name="explosive_processor", description="Breaks inside generation.", params=[],
                             generation_kwargs=lambda: {"do_sample": False},
                             logits_processors=lambda: [DivideByZero()]))


@hookimpl
def register_evaluators(register):
    register(SimpleNamespace(name="explosive_eval", description="Breaks.", params=[], higher_is_better=True,
                             evaluate=explode))


@hookimpl
def register_backends(register):
    register(SimpleNamespace(name="explosive_backend", description="Breaks.", params=[], create=explode))


@hookimpl
def on_train_start(run):
    raise RuntimeError("start broke")


@hookimpl
def on_log(run, metrics):
    raise RuntimeError("log broke")


@hookimpl
def on_evaluate(run, metrics):
    raise RuntimeError("evaluate broke")


@hookimpl
def on_train_end(run, result):
    raise RuntimeError("end broke")
'''


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "explosive.py").write_text(EXPLOSIVE)
    return folder


@pytest.fixture
def env(tmp_path, plugins_dir):
    environment = {k: v for k, v in os.environ.items() if k not in ("TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS")}
    environment.update(HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(tmp_path / "runs"), TUNELAB_PLUGINS_DIR=str(plugins_dir))
    return environment


@pytest.fixture
def explosive(plugins_dir, monkeypatch):
    """The process-wide registry with the explosive plugin (for in-process and AppTest checks)."""
    from dashboard import common

    monkeypatch.setenv("TUNELAB_PLUGINS_DIR", str(plugins_dir))
    for var in ("TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    registry.reset_registry()
    common.plugin_items.clear()
    reg = registry.get_registry()
    assert {p["name"]: p["status"] for p in reg.listing()}["explosive"] == "loaded"
    yield reg
    registry.reset_registry()
    common.plugin_items.clear()


def cli(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def plugin_failure(result, *fragments) -> str:
    """Exit 2, no traceback, and one stderr line naming the plugin (and ``fragments``)."""
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in ("plugin 'explosive'",) + fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- the mechanism ------------------------------------------------------------------------------

def test_guard_names_the_plugin_records_with_a_cap_and_lets_user_errors_through():
    reg = Registry(load_external=False)
    with pytest.raises(PluginError) as info:
        with reg.guard("samplers", "top_k", "generation_kwargs"):
            {}["nope"]
    error = info.value
    assert isinstance(error, UserError) and (error.plugin, error.kind, error.exc_type) == ("samplers", "samplers",
                                                                                          "KeyError")
    assert str(error).startswith("plugin 'samplers' failed in its sampler 'top_k' (generation_kwargs): KeyError: 'nope'")
    assert "\n" not in str(error)
    with pytest.raises(UserError, match="your file") as info:  # the plugin telling the user: unchanged
        with reg.guard("samplers", "top_k", "generation_kwargs"):
            raise UserError("your file")
    assert not isinstance(info.value, PluginError)
    with pytest.raises(ValueError):  # a type the call site handles itself (a format's bad data)
        with reg.guard("data_formats", "alpaca", "load", passes=(ValueError,)):
            raise ValueError("row 3")
    for _ in range(10):
        with pytest.raises(PluginError):
            with reg.guard("samplers", "top_k", "generation_kwargs"):
                raise RuntimeError("again")
    assert len(reg.failures.of("samplers")) == 2  # the KeyError, and RuntimeError once with its count
    assert reg.failures.of("samplers")[1].endswith("(10 times)")


def test_strict_mode_raises_the_plugins_own_exception(monkeypatch):
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")
    reg = Registry(load_external=False)
    with pytest.raises(KeyError):
        with reg.guard("samplers", "top_k", "generation_kwargs"):
            {}["nope"]


def test_failure_log_keeps_a_few_messages_per_plugin():
    log = FailureLog(per_plugin=3)
    assert [log.add("a", f"m{i}") for i in range(5)] == [True, True, True, False, False]
    assert log.add("a", "m0") is False and log.add("b", "x") is True
    assert log.of("a") == ["m0 (2 times)", "m1", "m2", "plugin 'a': 2 more failure(s) with other messages, not listed"]
    assert log.messages()[-1] == "x"


def test_a_broken_backend_is_one_line_naming_it(explosive):
    from tunelab.core import engine

    engine.reset_engines()
    with pytest.raises(PluginError, match=r"plugin 'explosive' failed in its backend 'explosive_backend' \(create\): "
                                          "ZeroDivisionError"):
        engine.get_engine({"backend": "explosive_backend"})


def test_in_process_every_call_site_names_the_plugin(explosive, tiny, write, chat_file):
    from tunelab.core import data, evaluate, generate

    model, tokenizer = tiny
    path = write("x.jsonl", '{"q": "a"}\n')
    with pytest.raises(PluginError, match=r"format 'explosive_format' \(load\): KeyError: 'nope'"):
        data.load_records(path, "explosive_format", registry=explosive)
    with pytest.raises(PluginError, match=r"\(iter_records\): KeyError"):
        data.read_records(path, "explosive_format", registry=explosive)
    with pytest.raises(UserError, match="its sniff raised RuntimeError"):
        data.detect_format(path, explosive)
    assert data.detect_format(chat_file, explosive) == "alpaca"  # a file the built-ins read: untouched
    with pytest.raises(PluginError, match=r"sampler 'explosive_kwargs' \(generation_kwargs\): ZeroDivisionError"):
        generate.next_token_distribution(model, tokenizer, "hi", "explosive_kwargs", registry=explosive)
    with pytest.raises(PluginError, match="logits processor DivideByZero.*ZeroDivisionError"):
        generate.next_token_distribution(model, tokenizer, "hi", "explosive_processor", registry=explosive)
    with pytest.raises(PluginError, match="logits processor DivideByZero"):  # inside transformers' generate
        generate.generate(model, tokenizer, "hi", "explosive_processor", max_new_tokens=3, registry=explosive)
    samples = evaluate.load_samples(chat_file, limit=2)
    report = evaluate.evaluate_model(model, tokenizer, samples, ["exact_match", "explosive_eval"], max_new_tokens=2,
                                     registry=explosive)
    assert report["metrics"]["exact_match"]["exact_match"] >= 0  # the other evaluator's result is kept
    assert "plugin 'explosive' failed in its evaluator 'explosive_eval'" in report["metrics"]["explosive_eval"]["error"]
    assert evaluate.failures(report) == [report["metrics"]["explosive_eval"]["error"]]
    listing = {p["name"]: p for p in explosive.listing()}["explosive"]
    assert any("explosive_kwargs" in f for f in listing["failures"])  # recorded, for the Plugins page


@pytest.mark.parametrize("bad, problem", [
    ("not an event", "not an event"),
    ({"row": 1, "record": {"messages": [{"role": "bot", "content": "x"}]}}, "role 'bot' is not one of"),
    ({"row": 1, "record": {"segments": [{"text": "x", "label": "yes"}]}}, "segments[0].label"),
    ({"row": 1, "error": "bad"}, "an error event needs"),
])
def test_a_format_yielding_malformed_events_is_the_formats_fault(bad, problem, write):
    fmt = types.SimpleNamespace(name="sloppy", description="d", extensions=[".x"], params=[],
                                sniff=lambda path, head: False, load=lambda path: [],
                                iter_records=lambda path: iter([bad]))

    class Plugin:
        @hookimpl
        def register_data_formats(self, register):
            register(fmt)

    from tunelab.core import data

    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "sloppy-plugin")])
    with pytest.raises(PluginError) as info:
        data.read_records(write("x.x", "x"), "sloppy", registry=reg)
    assert "plugin 'sloppy-plugin'" in str(info.value) and problem in str(info.value)


def test_a_formats_value_error_stays_the_users_data_error(write):
    def load(path):
        raise ValueError(f"{path}, row 2, field 'answer': missing")

    fmt = types.SimpleNamespace(name="strict_qa", description="d", extensions=[".x"], params=[],
                                sniff=lambda path, head: False, load=load)

    class Plugin:
        @hookimpl
        def register_data_formats(self, register):
            register(fmt)

    from tunelab.core import data

    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "qa")])
    with pytest.raises(UserError) as info:
        data.load_records(write("x.x", "x"), "strict_qa", registry=reg)
    assert not isinstance(info.value, PluginError) and "row 2, field 'answer'" in str(info.value)


# -- the CLI ------------------------------------------------------------------------------------

def test_cli_plugins_lists_it_with_descriptions_and_params(env):
    table = cli(env, "plugins")
    assert table.returncode == 0 and "explosive" in table.stdout, table.stderr
    listing = {p["name"]: p for p in json.loads(cli(env, "plugins", "--json").stdout)}
    contributions = listing["explosive"]["contributions"]
    assert contributions["samplers"][0] == {"name": "explosive_kwargs", "description": "Breaks in its settings.",
                                            "params": []}
    assert contributions["evaluators"][0]["higher_is_better"] is True
    assert contributions["data_formats"][0]["extensions"] == [".jsonl"]
    assert listing["samplers"]["contributions"]["samplers"][1]["params"][0]["name"] == "temperature"
    assert listing["explosive"]["failures"] == []


def test_cli_data_check(env, chat_file, write):
    assert cli(env, "data", "check", chat_file, "--no-tokens").returncode == 0
    plugin_failure(cli(env, "data", "check", chat_file, "--no-tokens", "--format", "explosive_format"),
                   "format 'explosive_format' (iter_records): KeyError: 'nope'", "not in your data")
    refused = cli(env, "data", "check", write("odd.jsonl", '{"q": "a"}\n'), "--no-tokens")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "its sniff raised RuntimeError" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_cli_generate(env, tiny_model):
    plugin_failure(cli(env, "generate", "--prompt", "hi", "--sampler", "explosive_kwargs"),
                   "sampler 'explosive_kwargs' (generation_kwargs): ZeroDivisionError")
    for stream in ([], ["--no-stream"]):
        plugin_failure(cli(env, "generate", "--model", tiny_model, "--prompt", "hi", "--sampler", "explosive_processor",
                           "--max-new-tokens", "3", *stream),
                       "sampler 'explosive_processor' (logits processor DivideByZero): ZeroDivisionError")


def test_cli_train_then_eval(env, tiny_model, chat_file, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.2},
                                  "max_steps": 3, "batch_size": 4, "max_length": 64, "eval_every": 2}))
    run_dir = tmp_path / "run"
    trained = cli(env, "train", config, "--run-dir", run_dir, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    errors = json.loads((run_dir / "status.json").read_text())["plugin_errors"]
    assert errors == ["plugin 'explosive' raised in on_train_start: RuntimeError: start broke",
                      "plugin 'explosive' raised in on_log: RuntimeError: log broke (3 times)",
                      "plugin 'explosive' raised in on_evaluate: RuntimeError: evaluate broke (2 times)",
                      "plugin 'explosive' raised in on_train_end: RuntimeError: end broke"]
    assert trained.stderr.count("log broke") == 1  # said once, counted after

    scored = cli(env, "eval", run_dir, "--limit", "2", "--max-new-tokens", "2",
                 "--evaluators", "exact_match,explosive_eval", "--param", "rouge_l.x=1")
    assert scored.returncode == 2 and "rouge_l, which is not among the evaluators run" in scored.stderr
    scored = cli(env, "eval", run_dir, "--limit", "2", "--max-new-tokens", "2",
                 "--evaluators", "exact_match,explosive_eval")
    plugin_failure(scored, "evaluator 'explosive_eval' (evaluate): ZeroDivisionError")
    metrics = json.loads(scored.stdout)
    assert "exact_match" in metrics["exact_match"]["tuned"]  # the other evaluator's result, printed and saved
    ok = cli(env, "eval", run_dir, "--limit", "2", "--max-new-tokens", "2", "--evaluators", "keyword_coverage",
             "--param", "keyword_coverage.max_keywords=3")
    assert ok.returncode == 0, ok.stderr
    saved = json.loads((run_dir / "eval" / "report.json").read_text())
    assert saved["metrics"]["keyword_coverage"]["tuned"]["keyword_coverage"] >= 0


# -- the dashboard ------------------------------------------------------------------------------

def test_generate_page_shows_a_broken_sampler_in_an_error_box(explosive, runs_dir, tiny_model):
    at = open_page("generate", model_name=tiny_model)
    for sampler, where in (("explosive_kwargs", "(generation_kwargs)"),
                           ("explosive_processor", "(logits processor DivideByZero)")):
        at.selectbox(key="gen.sampler").set_value(sampler).run()  # the next-token chart runs at once
        assert not at.exception, [e.value for e in at.exception]
        assert any("plugin 'explosive'" in e.value and where in e.value for e in at.error), [e.value for e in at.error]
        at.slider(key="gen.max_new_tokens").set_value(8)
        at.button(key="gen.go").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert len([e for e in at.error if "plugin 'explosive'" in e.value]) == 2  # the chart, and the answer
    at.selectbox(key="gen.sampler").set_value("greedy").run()  # the rest of the page carries on
    assert not at.exception and not at.error and at.get("plotly_chart")


def test_prepare_data_page_shows_a_broken_format_in_an_error_box(explosive, tiny_model):
    at = open_page("prepare_data", model_name=tiny_model)
    assert not at.error  # the lesson set, read by alpaca
    at.selectbox(key="data.format.science_tutor_train.alpaca.json").set_value("explosive_format").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("plugin 'explosive'" in e.value and "KeyError" in e.value for e in at.error), [e.value for e in at.error]


def test_evaluate_page_keeps_the_other_evaluators(explosive, tiny_run_root):
    run_dir, data = tiny_run_root
    at = open_page("evaluate", uploads=[str(data)])
    at.number_input(key="eval.limit").set_value(2)
    at.slider(key="eval.max_new_tokens").set_value(16)
    at.multiselect(key="eval.evaluators").set_value(["exact_match", "explosive_eval"])
    at.selectbox(key="eval.data").set_value(str(data))  # this session's upload
    at.button(key="eval.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("explosive_eval" in w.value and "plugin 'explosive'" in w.value for w in at.warning)
    assert at.get("plotly_chart")  # exact_match's chart


def test_plugins_page_lists_it_with_its_failures(explosive):
    with pytest.raises(PluginError):
        with explosive.guard("samplers", "explosive_kwargs", "generation_kwargs"):
            raise ZeroDivisionError("division by zero")
    at = open_page("plugin_shelf")
    installed = at.tabs[0]
    assert any("**explosive**" in m.value and "loaded" in m.value for m in installed.markdown)
    assert any("explosive_kwargs" in w.value and "ZeroDivisionError" in w.value for w in installed.warning)


@pytest.fixture
def tiny_run_root(tmp_path, tiny_model, chat_file, monkeypatch):
    """A finished 2-step run of the tiny model in a fresh run store (no lifecycle plugin loaded)."""
    from tunelab.core.config import RunConfig
    from tunelab.core.train import train

    root = tmp_path / "runs"
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(root))
    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.2},
                               "max_steps": 2, "batch_size": 4, "max_length": 64, "eval_every": 0})
    result = train(cfg, root / "tiny", registry=Registry(load_external=False))
    assert result["state"] == "finished", result
    return root / "tiny", chat_file


@pytest.mark.parametrize("kwargs, problem", [
    ({"do_sample": True, "temperatur": 0.5}, "TypeError: returned temperatur, which model.generate does not take"),
    ({"do_sample": True, "temperature": 0.0}, "ValueError: `temperature` (=0.0) has to be a strictly positive"),
    (["do_sample", True], "not a dict of keyword arguments"),
])
def test_a_samplers_unusable_settings_are_its_fault(tiny, kwargs, problem):
    from tunelab.core import generate

    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register(types.SimpleNamespace(name="odd", description="d", params=[], generation_kwargs=lambda: kwargs))

    model, tokenizer = tiny
    reg = Registry(load_external=False, extra_plugins=[(Plugin(), "odd-plugin")])
    for call in (generate.next_token_distribution, generate.generate):
        with pytest.raises(PluginError) as info:
            call(model, tokenizer, "hi", "odd", registry=reg)
        assert "plugin 'odd-plugin' failed in its sampler 'odd' (generation_kwargs)" in str(info.value)
        assert problem in str(info.value)
