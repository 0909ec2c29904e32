"""The plugin author's guide (docs/plugins.md), the template and the authoring kit (core.testing).

Every hook in core/hookspecs.py must have a section in docs/plugins.md with its exact signature,
its return contract and a working example, and a test of its own under tests/ (a hookimpl of it in
some test). Adding a hook without both fails here.
"""

import inspect
import re
import subprocess
import sys
import tomllib
import types

import pluggy
import pytest

from conftest import REPO
from tunelab.core import hookspecs, registry
from tunelab.core.registry import PARAM_TYPES, Registry

pytest_plugins = ["tunelab.core.testing"]

hookimpl = pluggy.HookimplMarker("tunelab")
GUIDE = REPO / "docs" / "plugins.md"
TEMPLATE = REPO / "docs" / "plugin-template"
HOOKS = {n: f for n, f in vars(hookspecs).items() if hasattr(f, "tunelab_spec")}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    registry.reset_registry()
    yield
    registry.reset_registry()


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def hook_section(name: str) -> str:
    """The text under the ``### `name(...)``` heading, up to the next heading of that level or above."""
    match = re.search(rf"^### `{name}\((.*?)\)`\n(.*?)(?=^##)", guide(), re.S | re.M)
    assert match, f"docs/plugins.md has no '### `{name}(...)`' section: document the hook there"
    return match.group(1), match.group(2)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


# -- every hook: documented, and tested ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_section_with_signature_contract_and_example(name):
    args, body = hook_section(name)
    assert args == ", ".join(inspect.signature(HOOKS[name]).parameters), \
        f"docs/plugins.md shows {name}({args}), the hookspec is {name}{inspect.signature(HOOKS[name])}"
    assert "**Returns**" in body, f"the {name} section does not say what the hook returns"
    examples = code_blocks(body, "python")
    assert any(re.search(rf"@hookimpl\s*\ndef {name}\(", code) for code in examples), \
        f"the {name} section has no example implementing it"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_test_of_its_own(name):
    implemented = re.compile(r"@hookimpl[^\n]*\n\s*def " + name + r"\(")
    files = [p.name for p in sorted((REPO / "tests").glob("test_*.py")) if implemented.search(p.read_text())]
    assert files, f"no test under tests/ implements the hook {name}: add one that checks it is called as documented"


def test_the_guide_covers_the_object_contracts_params_and_settings():
    text = guide()
    for kind, required in registry._REQUIRED.items():
        for attr, _check, _what in required:
            assert f"`{attr}" in text, f"docs/plugins.md does not document the {kind} attribute '{attr}'"
    for attr in ("name", "description", "params", "logits_processors", '"per_sample"'):
        assert f"`{attr}" in text, attr
    for kind in PARAM_TYPES:
        assert f"`{kind}`" in text, f"param type {kind} is not documented"
    for key in ("min", "max", "choices", "help", "default"):
        assert f"`{key}`" in text
    for setting in ("TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS", "TUNELAB_PLUGINS_DIR", "plugins.json",
                    "[project.entry-points.tunelab]", "catalog.json", "tunelab.core.testing"):
        assert setting in text, setting
    # the safety section points at a test that exists
    test_name = "test_a_plugin_raising_in_a_hook_does_not_stop_training"
    assert f"tests/test_train.py::{test_name}" in text
    assert f"def {test_name}(" in (REPO / "tests" / "test_train.py").read_text()
    for section in ("Hooks", "Param specs", "Testing your plugin", "Publishing", "Getting into the catalog", "Safety"):
        assert re.search(rf"^## {section}", text, re.M), f"docs/plugins.md lacks the section '{section}'"


def test_the_guides_examples_run_and_register(monkeypatch):
    """Each Python block of the guide runs; those with hooks load in strict mode next to the built-ins."""
    monkeypatch.setenv("TUNELAB_STRICT_PLUGINS", "1")
    blocks = code_blocks(guide(), "python")
    assert len(blocks) >= len(HOOKS)
    plugins = []
    for i, code in enumerate(blocks):
        module = types.ModuleType(f"guide_example_{i}")
        exec(compile(code, f"docs/plugins.md block {i}", "exec"), module.__dict__)  # noqa: S102 - our own docs
        if "@hookimpl" in code:
            plugins.append((module, f"guide-{i}"))
    reg = Registry(load_external=False, extra_plugins=plugins)
    assert {"cold", "typical_p"} <= set(reg.items("samplers"))
    assert "qa_lines" in reg.items("data_formats") and "mentions_reference" in reg.items("evaluators")
    for code in code_blocks(guide(), "toml"):
        tomllib.loads(code)


def test_readme_points_to_the_guide_and_the_example():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Plugins", 1)[1].split("\n## ", 1)[0]
    assert "docs/plugins.md" in section and "examples/tunelab-science-extras" in section


# -- lifecycle hooks are called as documented ----------------------------------------------------

def test_lifecycle_hooks_get_the_documented_arguments(tiny_model, chat_file, tmp_path):
    from tunelab.core import train
    from tunelab.core.config import RunConfig

    calls = []

    class Recorder:
        @hookimpl
        def on_train_start(self, run):
            calls.append(("on_train_start", dict(run)))

        @hookimpl
        def on_log(self, run, metrics):
            calls.append(("on_log", dict(metrics)))

        @hookimpl
        def on_evaluate(self, run, metrics):
            calls.append(("on_evaluate", dict(metrics)))

        @hookimpl
        def on_train_end(self, run, result):
            calls.append(("on_train_end", dict(result)))

    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.2},
                               "max_length": 64, "max_steps": 2, "batch_size": 4, "eval_every": 2,
                               "warmup_ratio": 0.0})
    reg = Registry(load_external=False, extra_plugins=[(Recorder(), "recorder")])
    result = train.train(cfg, tmp_path / "run", registry=reg)
    assert result["state"] == "finished"
    names = [n for n, _ in calls]
    assert names == ["on_train_start", "on_log", "on_log", "on_evaluate", "on_train_end"]
    start = calls[0][1]
    assert {"run_dir", "config", "total_steps", "start_step"} <= set(start)
    assert start["total_steps"] == 2 and start["start_step"] == 0 and start["config"]["max_steps"] == 2
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(calls[1][1])
    assert {"step", "epoch", "eval_loss", "eval_ppl", "elapsed_s"} <= set(calls[3][1])
    end = calls[4][1]
    assert end["state"] == "finished" and end["step"] == 2 and end["error"] is None and end["final_dir"]


# -- the template --------------------------------------------------------------------------------

def test_template_declares_its_module_as_a_tunelab_entry_point():
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
    (target,) = project["entry-points"]["tunelab"].values()
    assert (TEMPLATE / f"{target}.py").is_file()
    assert [p.name for p in TEMPLATE.glob("test_*.py")] == [f"test_{target}.py"]


def test_template_tests_pass():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout


# -- the authoring kit ---------------------------------------------------------------------------

def sampler(**over):
    attrs = dict(name="kit_sampler", description="d", params=[], generation_kwargs=lambda: {"do_sample": False})
    attrs.update(over)
    return types.SimpleNamespace(**attrs)


def test_builtin_registry_fixture(builtin_registry):
    assert list(builtin_registry.items("data_formats")) == ["alpaca", "sharegpt", "messages", "csv", "text", "input_output"]
    assert all(p["source"] == "builtin" for p in builtin_registry.listing())


def test_register_plugin_installs_the_registry_for_the_block_only(register_plugin):
    from tunelab.core.testing import plugin_for

    before = registry.get_registry()
    with register_plugin(plugin_for("samplers", sampler()), name="kit") as reg:
        assert registry.get_registry() is reg
        assert reg.owner("samplers", "kit_sampler") == "kit"
    assert registry.get_registry() is before


def test_register_plugin_is_strict(register_plugin):
    from tunelab.core.testing import plugin_for

    with pytest.raises(ValueError, match="invalid 'name'"):
        with register_plugin(plugin_for("samplers", sampler(name="Bad Name"))):
            pass
    import os

    assert "TUNELAB_STRICT_PLUGINS" not in os.environ  # restored


def test_contract_checks_catch_broken_plugins(check_data_format, check_sampler, check_evaluator, write):
    from tunelab.core.testing import SAMPLES

    path = write("x.jsonl", '{"q": "a"}\n')

    def raising_sniff(path, head):
        raise RuntimeError("sniff exploded")

    fmt = dict(name="kit_format", description="d", extensions=[".jsonl"], params=[],
               sniff=lambda path, head: True, load=lambda path: __import__("datasets").Dataset.from_list(
                   [{"messages": [{"role": "user", "content": "q"}]}]))
    with pytest.raises(AssertionError, match="no assistant turn"):
        check_data_format(types.SimpleNamespace(**fmt), path)
    with pytest.raises(RuntimeError, match="sniff exploded"):
        check_data_format(types.SimpleNamespace(**{**fmt, "sniff": raising_sniff}), path)
    with pytest.raises(AssertionError, match="must return True or False"):
        check_data_format(types.SimpleNamespace(**{**fmt, "sniff": lambda path, head: "yes"}), path)
    with pytest.raises(AssertionError, match="generation_kwargs must return a dict"):
        check_sampler(sampler(generation_kwargs=lambda: [("do_sample", False)]))
    evaluator = types.SimpleNamespace(name="kit_eval", description="d", params=[], higher_is_better=True,
                                      evaluate=lambda samples, context: {"score": 1.0, "per_sample": [1.0]})
    with pytest.raises(AssertionError, match=f"per_sample has 1 scores for {len(SAMPLES)} samples"):
        check_evaluator(evaluator)


def test_check_sampler_generates_with_the_tiny_model(check_sampler, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    kwargs, answer = check_sampler(sampler(), model, tokenizer)
    assert kwargs == {"do_sample": False} and isinstance(answer, str)


# -- the Write-your-own tab ----------------------------------------------------------------------

def test_write_your_own_tab_shows_the_template_and_every_guide_section():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.switch_page("dashboard/plugin_shelf.py").run()
    assert not at.exception, [e.value for e in at.exception]
    tab = at.tabs[2]
    codes = [c.value.strip() for c in tab.code]
    for path in TEMPLATE.iterdir():
        if path.suffix in (".toml", ".py"):
            assert path.read_text().strip() in codes, f"{path.name} is not shown on the Write-your-own tab"
    sections = re.findall(r"^## (.+)$", re.sub(r"^```.*?^```", "", guide(), flags=re.S | re.M), re.M)
    labels = [e.label for e in tab.expander]
    assert sections and all(s in labels for s in sections), (sections, labels)
