"""The layering the design promises, checked from the source: pages talk to the engine facade only,
the dashboard never imports torch, and the engine never imports Streamlit.

Why it matters: the Streamlit Cloud app installs requirements.txt alone (no torch) and talks to a
GPU box through the same facade; one stray ``from core import runs`` in a page, or ``import torch``
in a widget, breaks it there and nowhere else.
"""

import ast
import subprocess
import sys
from pathlib import Path

from no_engine import without_engine

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = sorted((REPO / "dashboard").glob("*.py"))
CORE = sorted((REPO / "core").rglob("*.py"))

# What a page or widget may import from core: the facade, the types it passes around, and the pure
# rules a thin client reads without the engine (curves; nothing there imports torch or a run folder).
ALLOWED_CORE = {"core.engine": None, "core.config": {"RunConfig", "CONFIG_DOCS"}, "core.errors": {"UserError"},
                "core.curves": None}
HEAVY = {"torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "bitsandbytes"}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every import in a file, top level or inside a function: ``(module, [names], line)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), [a.name for a in node.names], node.lineno))
    return found


def dashboard_violations(path: Path, root: Path = REPO) -> list[str]:
    bad = []
    for module, names, line in imports(path):
        where = f"{path.relative_to(root)}:{line}"
        top = module.split(".")[0]
        if top in HEAVY:
            bad.append(f"{where} imports {module}: the thin dashboard has no {top}")
        elif module == "core":
            bad.append(f"{where} imports {', '.join(names)} from core: call core.engine instead")
        elif top == "core":
            if module not in ALLOWED_CORE:
                bad.append(f"{where} imports {module}: pages use core.engine (and core types) only")
            elif ALLOWED_CORE[module] is not None and not set(names) <= ALLOWED_CORE[module]:
                extra = sorted(set(names) - ALLOWED_CORE[module])
                bad.append(f"{where} imports {', '.join(extra)} from {module}: only its types are allowed")
    return bad


def test_the_checks_catch_a_page_that_reaches_past_the_facade(tmp_path):
    page = tmp_path / "dashboard" / "bad.py"
    page.parent.mkdir()
    page.write_text("from core import runs\nfrom core.config import load_config\n"
                    "def f():\n    import torch\n    from core.train import train\n")
    found = dashboard_violations(page, root=tmp_path)
    assert len(found) == 4, found
    assert any("torch" in v for v in found) and any("core.train" in v for v in found)


def test_dashboard_modules_import_only_the_facade_and_core_types():
    assert len(DASHBOARD) >= 13  # every page and widget module is checked, not an empty glob
    bad = [v for path in DASHBOARD for v in dashboard_violations(path)]
    assert not bad, "\n".join(bad)


def test_every_page_is_a_function_called_at_the_bottom():
    pages = [p for p in DASHBOARD if p.stem not in ("__init__", "state", "common", "charts", "memory_view", "lessons")]
    assert len(pages) >= 10
    for path in pages:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "page" for n in tree.body), f"{path.name}: no page()"
        last = tree.body[-1]
        assert (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                and getattr(last.value.func, "id", None) == "page" and not last.value.args), \
            f"{path.name}: the module should end with page()"
        # module level holds only imports, constants, functions and classes: no Streamlit calls
        for node in tree.body[:-1]:
            assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign,
                                     ast.AnnAssign)) or (isinstance(node, ast.Expr) and isinstance(
                                         node.value, ast.Constant)), f"{path.name}:{node.lineno} runs at import"


def test_core_never_imports_streamlit():
    bad = [f"{p.relative_to(REPO)}:{line}" for p in CORE for module, _, line in imports(p)
           if module.split(".")[0] == "streamlit"]
    assert CORE and not bad, bad


def test_the_facade_active_states_are_the_run_stores():
    from core import engine, runs

    assert engine.ACTIVE == runs.ACTIVE


BLOCK_HEAVY = """
from dashboard import charts, common, lessons, memory_view, state  # noqa: F401 - importable without torch
from core.curves import curve_signals, ema
from core.engine import LocalEngine

engine = LocalEngine()
summary = engine.plan_summary({"lr": 3e-4}, 300, 50, 1000.0)
assert (summary["n_train"], summary["total_steps"], summary["cli_sets"]) == (270, 68, ["lr=0.0003"]), summary
assert "def train" in engine.loop_source()["source"]
assert engine.allowed_data("data/science_tutor_heldout.alpaca.json").endswith("science_tutor_heldout.alpaca.json")
assert ema([2.0, 2.0], 0.5) == [2.0, 2.0] and curve_signals([]) is None
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)  # nothing got round the block
from core.engine import engine_installed
assert not engine_installed()
print("ok")
"""


def test_the_widgets_and_the_pure_verbs_work_without_torch():
    script = without_engine(BLOCK_HEAVY, REPO, HEAVY)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
