"""What several test files need: waiting for a condition, opening a page under AppTest, serving the dashboard.

One copy each (they had grown five, four and two), imported as ``from helpers import ...`` like
``no_engine`` and ``ray_head``.
"""

from __future__ import annotations

import ast
import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")


def wait_for(predicate, timeout=120, every=0.3, what="condition"):
    """``predicate()``'s first truthy value, polled every ``every`` s; an AssertionError after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def open_page(page: str, timeout: int = 90, **state):
    """The app under AppTest with ``state`` in its session, switched to ``dashboard/<page>.py``; no exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"dashboard/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@contextlib.contextmanager
def streamlit_server(port: int, env: dict, log_path: Path):
    """``streamlit run streamlit_app.py`` on 127.0.0.1:``port``: yields its URL once healthy, stops it after."""
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
