"""The plugin catalog (catalog.json, core/catalog.py) and the Plugins page's Catalog tab."""

import json
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO
from tunelab.core import catalog
from tunelab.core.errors import UserError

EXAMPLE = "tunelab-science-extras"


def entry(**over):
    base = {"package": "tunelab-foo", "summary": "Foo.", "kinds": ["samplers"], "repo": "https://example.org/foo",
            "license": "MIT", "reviewed": "2026-01-31", "install": "tunelab-foo==1.0.0"}
    base.update(over)
    return base


def write_catalog(tmp_path, *entries, wrap=True):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"plugins": list(entries)} if wrap else list(entries)))
    return path


# -- the shipped catalog -----------------------------------------------------------------------

def test_shipped_catalog_is_valid_and_lists_the_example():
    entries = catalog.load_catalog()
    assert entries, "catalog.json lists nothing"
    by_name = {e["package"]: e for e in entries}
    example = by_name[EXAMPLE]
    assert example["install"] == "./examples/tunelab-science-extras"
    assert set(example["kinds"]) == {"data_formats", "samplers", "evaluators"}


def test_every_local_entry_matches_its_pyproject():
    """A ./path entry must build the package it names, with an entry point in the tunelab group."""
    for e in catalog.load_catalog():
        folder = catalog._local_path(e["install"], REPO)
        if folder is None:
            continue
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        assert catalog.canonical(project["name"]) == catalog.canonical(e["package"])
        assert project["entry-points"]["tunelab"], f"{e['package']} declares no tunelab entry point"
        assert project.get("license") == e["license"]


def test_pip_command_is_pip_install_of_the_catalog_spec():
    example = catalog.find(EXAMPLE)
    assert catalog.pip_command(example) == [sys.executable, "-m", "pip", "install",
                                            str(REPO / "examples" / "tunelab-science-extras")]
    assert catalog.pip_command(entry()) == [sys.executable, "-m", "pip", "install", "tunelab-foo==1.0.0"]


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, problem", [
    ({"summary": None}, "'summary' must be a non-empty string"),
    ({"kinds": ["widgets"]}, "'kinds' must be a non-empty list"),
    ({"kinds": []}, "'kinds' must be a non-empty list"),
    ({"reviewed": "31/01/2026"}, "'reviewed' must be a date as YYYY-MM-DD"),
    ({"install": "--index-url=https://evil.example/simple"}, "not an option"),
    ({"install": "tunelab-foo==1.0 --pre"}, "not a pip requirement"),
    ({"install": "other-package==1.0"}, "installs 'other-package', not 'tunelab-foo'"),
    ({"install": "tunelab-foo"}, "must pin the reviewed version"),
    ({"install": "../../somewhere"}, "leaves the repository"),
    ({"install": "./no-such-folder"}, "has no pyproject.toml"),
    ({"package": "not a name!"}, "'package' must be a distribution name"),
])
def test_malformed_entries_are_refused_with_the_field(tmp_path, bad, problem):
    path = write_catalog(tmp_path, entry(**bad))
    with pytest.raises(catalog.CatalogError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        catalog.load_catalog(path)


@pytest.mark.parametrize("spec, problem", [
    ("tunelab-foo", "must pin the reviewed version"),
    ("tunelab-foo>=1.0", "allows more than one version"),
    ("tunelab-foo~=1.0", "allows more than one version"),
    ("tunelab-foo==1.*", "allows more than one version"),
    ("tunelab-foo===1.0", "allows more than one version"),
    ("tunelab-foo==1.0,!=1.1", "allows more than one version"),
    ("tunelab-foo<2", "allows more than one version"),
    ("tunelab-foo @ https://example.org/tunelab_foo-1.0-py3-none-any.whl", "is a URL, VCS link or file"),
    ("tunelab-foo @ git+https://github.com/x/tunelab-foo@v1.0", "is a URL, VCS link or file"),
    ("git+https://github.com/x/tunelab-foo", "is a URL, VCS link or file"),
    ("https://example.org/tunelab-foo.tar.gz", "is a URL, VCS link or file"),
    ("file:///tmp/tunelab-foo", "is a URL, VCS link or file"),
    ("/tmp/tunelab-foo", "is a file path"),
    ("~/tunelab-foo", "is a file path"),
    ("C:\\plugins\\tunelab-foo", "is a file path"),
    ("plugins/tunelab-foo", "is a file path"),
])
def test_install_must_be_one_exact_version_from_the_index(tmp_path, spec, problem):
    path = write_catalog(tmp_path, entry(install=spec))
    with pytest.raises(catalog.CatalogError) as caught:
        catalog.load_catalog(path)
    message = str(caught.value)
    assert problem in message and "'tunelab-foo'" in message and "\n" not in message
    assert "tunelab-foo==1.0.0" in message or "installs" in message  # says how to fix it


@pytest.mark.parametrize("spec", ["tunelab-foo==1.0.0", "tunelab_foo==2", "tunelab-foo[extra]==1.0.0",
                                  "tunelab-foo==1.0.0+local", "tunelab-foo==1.0.0; python_version >= '3.10'"])
def test_exact_pins_are_accepted(tmp_path, spec):
    assert catalog.load_catalog(write_catalog(tmp_path, entry(install=spec)))[0]["install"] == spec


def test_missing_fields_and_duplicates(tmp_path):
    incomplete = entry()
    del incomplete["license"], incomplete["reviewed"]
    with pytest.raises(catalog.CatalogError, match=r"plugins\[0\]: missing 'license', 'reviewed'"):
        catalog.load_catalog(write_catalog(tmp_path, incomplete))
    with pytest.raises(catalog.CatalogError, match="listed twice"):
        catalog.load_catalog(write_catalog(tmp_path, entry(), entry(package="TUNELAB_foo", install="tunelab_foo==1")))


def test_a_plain_list_and_bad_json(tmp_path):
    assert catalog.load_catalog(write_catalog(tmp_path, entry(), wrap=False))[0]["package"] == "tunelab-foo"
    (tmp_path / "catalog.json").write_text("{oops")
    with pytest.raises(catalog.CatalogError, match="line 1: invalid JSON"):
        catalog.load_catalog(tmp_path / "catalog.json")
    with pytest.raises(catalog.CatalogError, match="cannot read"):
        catalog.load_catalog(tmp_path / "missing.json")


# -- installed or not ----------------------------------------------------------------------------

def test_installed_status_comes_from_importlib_metadata(tmp_path):
    listed = catalog.with_status(write_catalog(tmp_path, entry(package="tunelab-not-installed-anywhere",
                                                               install="tunelab-not-installed-anywhere==1.0")))
    assert listed[0]["installed"] is None and listed[0]["plugins"] == []
    assert catalog.installed_version("pluggy")  # any installed distribution
    example = next(e for e in catalog.with_status() if e["package"] == EXAMPLE)
    if example["installed"] is None:
        pytest.skip(f"{EXAMPLE} is not installed (make setup installs it)")
    assert example["plugins"] == [EXAMPLE]
    assert catalog.importable(EXAMPLE)


# -- install: catalog entries only --------------------------------------------------------------

class FakeRun:
    def __init__(self, returncode=0):
        self.calls, self.returncode = [], returncode

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        return type("Done", (), {"returncode": self.returncode, "stdout": "Successfully installed\n",
                                 "stderr": ""})()


def test_install_refuses_what_the_catalog_does_not_list(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(catalog.subprocess, "run", fake)
    with pytest.raises(UserError, match="'evil-package' is not in the catalog"):
        catalog.install({"package": "evil-package", "install": "evil-package==6.6.6"})
    with pytest.raises(UserError, match="not in the catalog"):
        catalog.install("requests")
    assert fake.calls == []


def test_install_runs_the_catalogs_spec_not_the_callers(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(catalog.subprocess, "run", fake)
    forged = {"package": EXAMPLE, "install": "--index-url=https://evil.example/simple"}
    result = catalog.install(forged)
    assert fake.calls == [[sys.executable, "-m", "pip", "install", str(REPO / "examples" / "tunelab-science-extras")]]
    assert result["command"] == fake.calls[0] and "Successfully installed" in result["output"]
    assert result["returncode"] == 0 and result["package"] == EXAMPLE


def test_install_reports_a_pip_failure(monkeypatch, tmp_path):
    monkeypatch.setattr(catalog.subprocess, "run", FakeRun(returncode=1))
    path = write_catalog(tmp_path, entry(package="tunelab-not-installed-anywhere",
                                         install="tunelab-not-installed-anywhere==1.0"))
    result = catalog.install("tunelab-not-installed-anywhere", path)
    assert result["ok"] is False and "exit 1" in result["message"]


def test_core_catalog_has_no_streamlit():
    assert "streamlit" not in Path(catalog.__file__).read_text()
    assert "streamlit" not in (REPO / "core" / "testing.py").read_text()


# -- the Catalog tab ------------------------------------------------------------------------------

def test_catalog_tab_installs_only_after_the_warning_is_acknowledged(monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tunelab.core import registry

    pending = entry(package="tunelab-foo", installed=None, plugins=[])
    monkeypatch.setattr(catalog, "with_status", lambda path=None: [pending])
    # the page installs through the engine, which looks the package up in the catalog first
    monkeypatch.setattr(catalog, "find", lambda package, path=None: pending)
    installs, resets = [], []

    def fake_install(e, path=None):
        installs.append(e["package"])
        return {"package": "tunelab-foo", "command": ["pip", "install", "tunelab-foo==1.0.0"], "returncode": 0,
                "ok": True, "output": "Successfully installed tunelab-foo", "installed": "1.0.0",
                "plugins": ["tunelab-foo"], "restart_needed": False, "message": "tunelab-foo 1.0.0 is installed"}

    monkeypatch.setattr(catalog, "install", fake_install)
    real_reset = registry.reset_registry
    monkeypatch.setattr(registry, "reset_registry", lambda: (resets.append(1), real_reset()))

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.switch_page("dashboard/plugin_shelf.py").run()
    assert not at.exception, [e.value for e in at.exception]
    tab = at.tabs[1]
    assert any("with the app's rights" in w.value for w in tab.warning)
    button = next(b for b in tab.button if b.label == "Install tunelab-foo")
    assert button.disabled
    next(c for c in tab.checkbox if c.key == "catalog.understand.tunelab-foo").check().run()
    button = next(b for b in at.tabs[1].button if b.label == "Install tunelab-foo")
    assert not button.disabled
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert installs == ["tunelab-foo"] and resets
    # the fake plugin is not really there: the page says a restart is needed rather than claiming success
    assert any("restart TuneLab" in w.value for w in at.tabs[1].warning)
