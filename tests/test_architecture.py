"""The layering the design promises, checked from the source: pages talk to the engine facade only,
the dashboard never imports torch, and the engine never imports Streamlit.

Why it matters: the Streamlit Cloud app installs requirements.txt alone (no torch) and talks to a
GPU box through the same facade; one stray ``from tunelab.core import runs`` in a page, or ``import torch``
in a widget, breaks it there and nowhere else.
"""

import ast
import subprocess
import sys
from pathlib import Path

from helpers import imports
from no_engine import without_engine

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = sorted((REPO / "dashboard").glob("*.py"))
CORE = sorted((REPO / "core").rglob("*.py"))

# What a page or widget may import from core: the facade, the types it passes around, and the pure
# rules a thin client reads without the engine (curves; the config's checks, so a widget refuses a value
# by the very rule the config file and --set use; nothing there imports torch or a run folder).
ALLOWED_CORE = {"core.engine": None, "core.config": {"RunConfig", "CONFIG_DOCS", "value_problem", "cautions",
                                                             "eval_samples_problem"},
                "core.errors": {"UserError"}, "core.curves": None}
HEAVY = {"torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "bitsandbytes"}


def dashboard_violations(path: Path, root: Path = REPO) -> list[str]:
    bad = []
    for module, names, line in imports(path):
        where = f"{path.relative_to(root)}:{line}"
        module = module.removeprefix("tunelab.")  # the engine's import name is tunelab.core (tunelab/__init__.py)
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
    page.write_text("from tunelab.core import runs\nfrom tunelab.core.config import load_config\n"
                    "def f():\n    import torch\n    from tunelab.core.train import train\n")
    found = dashboard_violations(page, root=tmp_path)
    assert len(found) == 4, found
    assert any("torch" in v for v in found) and any("core.train" in v for v in found)


def test_dashboard_modules_import_only_the_facade_and_core_types():
    assert len(DASHBOARD) >= 13  # every page and widget module is checked, not an empty glob
    bad = [v for path in DASHBOARD for v in dashboard_violations(path)]
    assert not bad, "\n".join(bad)


def test_every_page_is_a_function_called_at_the_bottom():
    pages = [p for p in DASHBOARD if p.stem not in ("__init__", "state", "common", "charts", "memory_view", "lessons", "course")]
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
    from tunelab.core import engine, runs

    assert engine.ACTIVE == runs.ACTIVE


BLOCK_HEAVY = """
from dashboard import charts, common, lessons, memory_view, state  # noqa: F401 - importable without torch
from tunelab.core.backends import ray  # noqa: F401 - the thin client's backend
from tunelab.core.curves import curve_signals, ema
from tunelab.core.engine import Engine

engine = Engine()  # the rules every backend answers the same, here without torch
summary = engine.plan_summary({"lr": 3e-4}, 300, 50, 1000.0)
assert (summary["n_train"], summary["total_steps"], summary["cli_sets"]) == (270, 68, ["lr=0.0003"]), summary
assert "def train" in engine.loop_source()["source"]
assert engine.allowed_data("data/science_tutor_heldout.alpaca.json").endswith("science_tutor_heldout.alpaca.json")
assert ema([2.0, 2.0], 0.5) == [2.0, 2.0] and curve_signals([]) is None
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)  # nothing got round the block
from tunelab.core.engine import engine_installed
assert not engine_installed()
print("ok")
"""


def test_the_widgets_and_the_pure_verbs_work_without_torch():
    script = without_engine(BLOCK_HEAVY, REPO, HEAVY)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# -- the floors of core/: no import circle, one owner for each name, short functions --------------------

def core_module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_imports(path: Path) -> set[str]:
    """The core modules ``path`` imports, at module level or inside a function alike."""
    me = core_module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t.startswith("core.") and t != me}
    return found


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_circle_check_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_inside_core():
    modules = {core_module(p): p for p in CORE}
    graph = {name: {t for t in core_imports(path) if t in modules} for name, path in modules.items()}
    assert len(graph) >= 25 and graph["core.__main__"]  # the walk sees the modules and their imports
    assert not import_circles(graph), import_circles(graph)


def test_no_function_in_core_is_longer_than_80_lines():
    long = [f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in CORE for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_no_public_name_is_defined_in_two_core_modules():
    owners: dict[str, list[str]] = {}
    for p in CORE:
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for name in names:
                if not name.startswith("_") and name not in ("hookimpl", "hookspec", "main", "__version__"):
                    owners.setdefault(name, []).append(core_module(p))
    twice = {name: where for name, where in owners.items() if len(where) > 1}
    assert not twice, twice
