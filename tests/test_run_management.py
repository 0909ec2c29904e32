"""Managing runs: disk use, delete (never a live run; asked first on the page), checkpoints to keep, the
newest run followed, the stop message true to what was saved, the speed learned from runs, and the CLI's
``runs`` and ``delete``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from tunelab.core import runs  # noqa: E402
from tunelab.core.config import RunConfig  # noqa: E402
from tunelab.core.errors import UserError  # noqa: E402

APP = str(REPO / "streamlit_app.py")
TIMEOUT = 90


def make_run(root: Path, name: str, state: str = "finished", step: int = 3, total: int = 3, size: int = 4096,
             config: dict | None = None, speeds=(), **status) -> Path:
    """A run folder as training leaves it, with ``size`` bytes of 'model' and metrics rows at ``speeds``."""
    run_dir = runs.create_run(RunConfig.from_dict(config or {}), run_dir=root / name)
    (run_dir / "final").mkdir(exist_ok=True)
    (run_dir / "final" / "model.safetensors").write_bytes(os.urandom(size))
    for i, speed in enumerate(speeds, 1):
        runs.append_metrics(run_dir, {"step": i, "loss": 2.0, "tokens_per_s": speed, "elapsed_s": float(i)})
    runs.write_status(run_dir, state=state, step=step, total_steps=total, **{"pid": None, **status})
    return run_dir


# -- the store --------------------------------------------------------------------------------------

def test_disk_use_is_listed_per_run(runs_dir):
    make_run(runs_dir, "small", size=10_000)
    make_run(runs_dir, "big", size=300_000)
    found = {r["run_id"]: r["disk_bytes"] for r in runs.list_runs()}
    assert found["big"] >= 300_000 > found["small"] >= 10_000


def test_delete_removes_a_finished_run_and_refuses_a_live_one(runs_dir):
    done = make_run(runs_dir, "done")
    live = make_run(runs_dir, "live", state="running", pid=os.getpid())  # this process stands in for its worker
    with pytest.raises(UserError, match="live is running: stop it first"):
        runs.delete_run(live)
    assert (live / "final").is_dir()
    freed = runs.delete_run(done)
    assert freed >= 4096 and not done.exists()
    assert [r["run_id"] for r in runs.list_runs()] == ["live"]
    assert not list(runs_dir.glob(".deleting-*"))


def test_delete_refuses_a_run_whose_worker_holds_its_lock(runs_dir):
    import fcntl

    run_dir = make_run(runs_dir, "locked", state="stopped")
    fd = os.open(run_dir / runs.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker just launched by Resume
    try:
        with pytest.raises(UserError, match="live"):
            runs.delete_run(run_dir)
    finally:
        os.close(fd)
    assert run_dir.is_dir()


def test_delete_on_a_shared_server_is_the_owners_only(runs_dir, monkeypatch):
    run_dir = make_run(runs_dir, "theirs", owner="alice")
    monkeypatch.setenv("TUNELAB_SHARED", "1")
    with pytest.raises(UserError, match="only the session that started a run can delete it"):
        runs.delete_run(run_dir, owner="bob")
    runs.delete_run(run_dir, owner="alice")
    assert not run_dir.exists()


def test_checkpoints_to_keep(tmp_path, tiny_model, chat_file, monkeypatch):
    """keep_checkpoints reaches train.py's saving, which keeps that many of the newest."""
    from tunelab.core import train

    folder = tmp_path / "r"
    for step in (1, 2, 3):
        path = folder / "checkpoints" / f"step-{step}"
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text("{}")
    assert [p.name for p in runs.prune_checkpoints(folder, keep=2)] == ["step-1"]
    assert [p.name for p in runs.checkpoints(folder)] == ["step-2", "step-3"]

    kept = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda *a, **kw: kept.append(kw.get("keep")) or real(*a, **kw))
    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(chat_file)}, "max_steps": 3,
                               "save_every": 1, "keep_checkpoints": 2, "batch_size": 4, "max_length": 64})
    result = train.train(cfg, tmp_path / "run")
    assert result["state"] == "finished" and kept == [2, 2]  # steps 1 and 2 (the end saves final/ instead)


def test_the_speed_is_learned_from_runs_here(runs_dir):
    cfg = RunConfig.from_dict({"batch_size": 4, "max_length": 128})
    assert runs.observed_speed(cfg) is None
    make_run(runs_dir, "other-model", config={"model": "gpt2"}, speeds=[50, 900, 900])
    assert runs.observed_speed(cfg) is None  # another model says nothing about this one
    make_run(runs_dir, "bigger-batch", config={"batch_size": 8, "max_length": 128}, speeds=[10, 300, 320, 310])
    rough = runs.observed_speed(cfg)
    assert rough["tokens_per_s"] == 310 and rough["sure"] == "rough" and rough["differs"] == ["batch_size"]
    make_run(runs_dir, "same", config={"batch_size": 4, "max_length": 128}, speeds=[5, 200, 210, 220])
    close = runs.observed_speed(cfg)
    assert close["tokens_per_s"] == 210 and close["sure"] == "close" and "run same (3 steps)" in close["source"]
    measured = runs.observed_speed(RunConfig.from_dict({"batch_size": 2}),
                                   measured=[{"config": {"batch_size": 2}, "tokens_per_s": 123.0}])
    assert measured["tokens_per_s"] == 123.0 and measured["sure"] == "close"


# -- the engine and the CLI ---------------------------------------------------------------------------

def test_engines_delete_or_say_they_do_not(runs_dir):
    from tunelab.core.backends.local import LocalEngine
    from tunelab.core.backends.ray import RayEngine

    make_run(runs_dir, "gone")
    engine = LocalEngine({"standby": False})
    assert engine.delete_run("gone")["freed_bytes"] > 0 and engine.find_run("gone") is None
    with pytest.raises(UserError, match="there is no run called 'gone'"):
        engine.delete_run("gone")
    ray = RayEngine({"address": "http://127.0.0.1:1", "token": "t"})
    with pytest.raises(UserError, match="deleting runs is not offered through the ray backend.*python -m tunelab delete"):
        ray.delete_run("anything")


def cli(*args, root: Path):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TUNELAB_RUNS_DIR=str(root)))


def test_cli_runs_and_delete(runs_dir):
    make_run(runs_dir, "old", size=50_000)
    make_run(runs_dir, "busy", state="running", step=1, total=12, pid=os.getpid())
    listed = cli("runs", "--json", root=runs_dir)
    assert listed.returncode == 0, listed.stderr
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert rows["old"]["state"] == "finished" and rows["old"]["disk_bytes"] >= 50_000
    assert rows["busy"]["state"] == "running" and (rows["busy"]["step"], rows["busy"]["total_steps"]) == (1, 12)
    table = cli("runs", root=runs_dir)
    assert "busy" in table.stdout and "1/12" in table.stdout and "2 runs" in table.stdout
    refused = cli("delete", runs_dir / "busy", root=runs_dir)
    assert refused.returncode == 2 and "stop it first" in refused.stderr and refused.stderr.count("\n") == 1
    done = cli("delete", runs_dir / "old", root=runs_dir)
    assert done.returncode == 0 and "deleted run old" in done.stdout and not (runs_dir / "old").exists()
    missing = cli("delete", runs_dir / "old", root=runs_dir)
    assert missing.returncode == 2 and "not a run folder" in missing.stderr


# -- the Fine-tune page -----------------------------------------------------------------------------

def open_page(query: dict | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("dashboard/fine_tune.py")
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at) -> list[dict]:
    frame = next(d for d in at.dataframe if "disk" in d.value.columns)
    return frame.value.to_dict("records")


def test_the_page_follows_the_newest_run_and_shows_disk_use(runs_dir):
    make_run(runs_dir, "first", size=20_000)
    make_run(runs_dir, "second", size=20_000)
    at = open_page()
    assert at.query_params["run"] == "second"  # nothing chosen: the newest run
    rows = table(at)
    assert [r["run"] for r in rows] == ["second", "first"] and all("KiB" in r["disk"] for r in rows)
    assert at.selectbox(key="ft.open_run").value == "second" and at.multiselect(key="ft.overlay").value == ["second"]
    make_run(runs_dir, "third")  # started elsewhere; this session then looks at it (as Start does)
    at.session_state["current_run"] = "third"
    at.query_params["run"] = "third"
    at.run()
    assert at.selectbox(key="ft.open_run").value == "third"  # the picker and the overlay follow
    assert at.multiselect(key="ft.overlay").value == ["second", "third"]


def test_the_runs_table_reads_the_store_each_time(runs_dir):
    busy = make_run(runs_dir, "busy", state="running", step=0, total=12, pid=os.getpid())
    at = open_page({"run": "busy"})
    assert table(at)[0]["step"] == "0 / 12"
    runs.write_status(busy, step=3)
    at.run()
    assert table(at)[0]["step"] == "3 / 12"


def test_delete_asks_first_and_refuses_a_live_run(runs_dir):
    make_run(runs_dir, "keep-me")
    make_run(runs_dir, "busy", state="running", step=1, total=5, pid=os.getpid())
    at = open_page({"run": "keep-me"})
    at.selectbox(key="ft.open_run").set_value("busy")
    at.button(key="ft.delete").click().run()
    assert any("is running: stop it first" in e.value for e in at.error)
    assert (runs_dir / "busy").is_dir()
    at.selectbox(key="ft.open_run").set_value("keep-me")
    at.button(key="ft.delete").click().run()
    question = [w.value for w in at.warning if w.value.startswith("Delete run `keep-me`")]
    assert question and "cannot be undone" in question[0] and (runs_dir / "keep-me").is_dir()  # asked, not done
    at.button(key="ft.delete_no").click().run()
    assert (runs_dir / "keep-me").is_dir() and not any(w.value.startswith("Delete run") for w in at.warning)
    at.button(key="ft.delete").click().run()
    at.button(key="ft.delete_yes").click().run()
    assert not at.exception and not (runs_dir / "keep-me").exists()
    assert [r["run"] for r in table(at)] == ["busy"]
    assert at.query_params["run"] == "busy"  # the deleted run was open: the page moves to the newest


def test_the_stop_message_says_what_was_saved(runs_dir):
    make_run(runs_dir, "early", state="stopped", step=0, total=12)
    at = open_page({"run": "early"})
    said = " ".join(i.value for i in at.info)
    assert "before the first training step, so no checkpoint was saved" in said and "after a checkpoint" not in said
    later = make_run(runs_dir, "later", state="stopped", step=3, total=12)
    checkpoint = later / "checkpoints" / "step-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    runs.append_metrics(later, {"step": 3, "loss": 2.0, "tokens_per_s": 100.0, "elapsed_s": 3.0})
    at = open_page({"run": "later"})
    said = " ".join(i.value for i in at.info)
    assert "Stopped at step 3, with a checkpoint of step 3" in said


def test_a_speed_from_too_few_steps_is_rough(runs_dir):
    make_run(runs_dir, "short", speeds=[10, 250])
    speed = runs.observed_speed(RunConfig())
    assert speed["tokens_per_s"] == 250 and speed["sure"] == "rough" and speed["differs"] == []
