"""The Ray backend against a real Ray head (token auth, 127.0.0.1) and the TuneLab service.

The head and the service are module fixtures (started once, stopped after). Deselect the
module with ``-m "not ray"``. Figures (submit to first mirrored row, time to first token, the
head's memory) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunelab.core import runs
from tunelab.core.backends import ray as rb
from tunelab.core.errors import UserError
from tests.ray_head import RayHead, free_port
from helpers import wait_for

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent
FIGURES: dict = {}


# -- without a head: the command a job runs, and requests that must never be sent ----------------
def test_a_job_runs_the_plain_worker_command_and_a_group_job_reserves_nothing_itself():
    body = rb.job_request("/box/py", "/box/runs/r1", "tunelab-r1-1", "gcs://_ray_pkg_x.zip", "/box/runs", "r1",
                          gpus=1, workers=4)
    assert body["entrypoint"] == "/box/py -m tunelab train /box/runs/r1/config.yaml --run-dir /box/runs/r1"
    # the group's driver holds no CPU or GPU: its 4 ranks ask Ray Train for theirs
    assert body["entrypoint_num_cpus"] == 0 and "entrypoint_num_gpus" not in body
    assert body["runtime_env"]["working_dir"] == "gcs://_ray_pkg_x.zip"
    assert body["runtime_env"]["env_vars"]["TUNELAB_RUNS_DIR"] == "/box/runs"
    one = rb.job_request("/box/py", "/box/runs/r1", "j", "gcs://p", "/box/runs", "r1", resume=True, gpus=1)
    assert one["entrypoint"] == "/box/py -m tunelab resume /box/runs/r1" and one["entrypoint_num_gpus"] == 1
    assert one["entrypoint_num_cpus"] == 1
    assert "entrypoint_num_gpus" not in rb.job_request("/p", "/r", "j", "gcs://p", "/", "r")
    assert rb._engine_config({"gpus": 1, "lr": 1e-4})[0] == {"lr": 1e-4}
    assert rb._engine_config({"gpus": 2, "lr": 1e-4})[0] == {"lr": 1e-4, "workers": 2}  # one rank per GPU
    with pytest.raises(UserError, match="negative"):
        rb._engine_config({"gpus": -1})


def test_code_package_is_stable_and_holds_the_engine():
    import io
    import zipfile

    name, data = rb.code_package()
    assert rb.code_package()[0] == name and name.startswith("_ray_pkg_") and name.endswith(".zip")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"tunelab/__init__.py", "tunelab/__main__.py", "core/__main__.py", "plugins/formats.py"} <= set(names)
    assert not any("__pycache__" in n for n in names)


class Listener:
    """A socket that counts the connections made to it (and answers none)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.3)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
                conn.close()
                count += 1
            except OSError:
                return count


def test_no_request_is_sent_without_a_token(monkeypatch):
    listener = Listener()
    monkeypatch.delenv("TUNELAB_RAY_ALLOW_NO_TOKEN", raising=False)
    engine = rb.RayEngine({"address": listener.url, "service": listener.url})
    with pytest.raises(UserError, match="no token for the backend at http://127.0.0.1"):
        engine.samplers()
    assert engine.health()["ok"] is False
    assert listener.connections() == 0
    # allowed for loopback only, and only when asked for explicitly
    monkeypatch.setenv("TUNELAB_RAY_ALLOW_NO_TOKEN", "1")
    remote = rb.Http("http://10.1.2.3:8265", None, "the Ray jobs API")
    with pytest.raises(UserError, match="no token"):
        remote.open("GET", "/api/jobs/")
    with pytest.raises(UserError):
        rb.Http(listener.url, None, "the Ray jobs API", timeout=0.5).open("GET", "/api/jobs/")
    assert listener.connections() == 1


def test_unreachable_address_is_one_line_naming_it(runs_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    engine = rb.RayEngine({"address": url, "token": "t" * 64})
    with pytest.raises(rb.BackendUnreachable, match=f"cannot reach the Ray jobs API at {url}"):
        engine.jobs.json("GET", "/api/jobs/")
    assert not engine.health()["ok"] and url in engine.health()["detail"]
    proc = _cli(["train", str(REPO / "configs" / "lesson.yaml"), "--run-dir", str(tmp_path / "r")],
                {"TUNELAB_RAY_ADDRESS": url, "TUNELAB_RAY_TOKEN": "t" * 64})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach" in proc.stderr and "Traceback" not in proc.stderr


class FakeJobs:
    """Ray's jobs API as the stop fallback sees it: a job that never ends by itself."""

    def __init__(self):
        self.calls = []

    def json(self, method, path, body=None, **_):
        self.calls.append((method, path))
        return {"status": "STOPPED" if ("POST", path.replace("/stop", "") + "/stop") in self.calls else "RUNNING"}


def test_stop_falls_back_to_rays_job_stop_after_the_grace_time(monkeypatch):
    engine = rb.RayEngine({"address": "http://127.0.0.1:1", "token": "t"})
    engine.jobs = FakeJobs()
    monkeypatch.setattr(rb, "STOP_GRACE_S", 1.5)
    t0 = time.time()
    engine._stop_fallback("tunelab-r-1")
    assert ("POST", "/api/jobs/tunelab-r-1/stop") in engine.jobs.calls and time.time() - t0 >= 1.5
    engine.jobs.calls.clear()
    engine.jobs.calls.append(("POST", "/api/jobs/tunelab-r-2/stop"))  # a job that ended in time: left alone
    engine._stop_fallback("tunelab-r-2")
    assert engine.jobs.calls == [("POST", "/api/jobs/tunelab-r-2/stop"), ("GET", "/api/jobs/tunelab-r-2")]


def test_service_will_not_listen_without_a_token(monkeypatch, tmp_path):
    from tunelab.core import service

    for env in ("TUNELAB_RAY_TOKEN", "RAY_AUTH_TOKEN", "TUNELAB_RAY_ALLOW_NO_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    fake = object()  # never reached: the refusal comes first
    with pytest.raises(UserError, match="needs a token"):
        service.make_server("0.0.0.0", 0, service=fake)
    monkeypatch.setenv("TUNELAB_RAY_ALLOW_NO_TOKEN", "1")
    with pytest.raises(UserError, match="needs a token"):  # allowed on loopback only
        service.make_server("0.0.0.0", 0, service=fake)
    service.make_server("127.0.0.1", 0, service=fake).server_close()
    (tmp_path / "tok").write_text("abc\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert service.service_token() == "abc"  # Ray's own token file: the box keeps one secret


def test_get_engine_builds_the_ray_backend_from_settings(monkeypatch):
    from tunelab.core.engine import get_engine, reset_engines

    for env in ("TUNELAB_BACKEND", "TUNELAB_RAY_ADDRESS", "TUNELAB_RAY_TOKEN", "TUNELAB_RAY_SERVICE"):
        monkeypatch.delenv(env, raising=False)
    reset_engines()
    engine = get_engine({"backend": "ray", "address": "https://gpu-box.example.org:8265", "token": "t"})
    assert isinstance(engine, rb.RayEngine)
    assert engine.service_url == "https://gpu-box.example.org:8266"  # the service beside Ray, same scheme
    monkeypatch.setenv("TUNELAB_RAY_SERVICE", "https://gpu-box.example.org/tunelab")
    reset_engines()
    assert get_engine({"backend": "ray", "address": "https://x:8265", "token": "t"}).service_url.endswith("/tunelab")
    reset_engines()


BLOCK_HEAVY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'ray', 'transformers', 'accelerate'):
            raise ImportError(f'{name} is not installed on the thin client')
sys.meta_path.insert(0, Block())
from tunelab.core.__main__ import main
code = main(sys.argv[1:])
assert not any(m in sys.modules for m in ('torch', 'ray', 'transformers'))
sys.exit(code)
"""


def test_not_a_url_is_refused():
    with pytest.raises(UserError, match="not a URL"):
        rb.RayEngine({"address": "gpu-box:8265", "token": "x"})
    with pytest.raises(UserError, match="needs an address"):
        rb.RayEngine({"token": "x"})


def _cli(argv, env_extra, timeout=300):
    env = dict(os.environ, TUNELAB_BACKEND="ray", **env_extra)
    return subprocess.run([sys.executable, "-m", "tunelab", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- a real head and the service ------------------------------------------------------------------
@pytest.fixture(scope="module")
def box(tmp_path_factory, tiny_model):
    """A Ray head with token auth and the TuneLab service beside it, sharing the box's runs folder."""
    box_runs = tmp_path_factory.mktemp("box") / "runs"
    box_runs.mkdir()
    env = {"TUNELAB_RUNS_DIR": str(box_runs), "TUNELAB_MAX_WORKERS": "2", "HF_HUB_OFFLINE": "1",
           "TUNELAB_HOME": os.environ["TUNELAB_HOME"], "TOKENIZERS_PARALLELISM": "false"}
    head = RayHead(env=env).start()
    FIGURES["head start (s)"] = round(head.start_s, 1)
    port = free_port()
    service_env = dict(os.environ, **env, TUNELAB_RAY_TOKEN=head.token)
    log = open(box_runs.parent / "service.log", "w")
    service = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", "--port", str(port)], cwd=REPO,
                               env=service_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    probe = rb.Http(url, head.token, "the TuneLab service", timeout=2)
    try:
        wait_for(lambda: _answers(probe), 60, what="the service")
        yield {"head": head, "token": head.token, "address": head.address, "service": url, "runs": box_runs,
               "service_proc": service}
    finally:
        head.sample_rss()
        FIGURES["head peak RSS of its process tree, jobs included (MiB)"] = round(head.peak_rss / 2**20)
        FIGURES["head peak RSS without the jobs' TuneLab workers (MiB)"] = round(head.peak_rss_head / 2**20)
        service.terminate()
        service.wait(10)
        log.close()
        head.stop()
        print("\nRay backend figures:", json.dumps(FIGURES, indent=2))


def _answers(http) -> bool:
    try:
        http.json("GET", "/v1/info")
        return True
    except UserError:
        return False


@pytest.fixture
def engine(box, runs_dir):
    return rb.RayEngine({"address": box["address"], "token": box["token"], "service": box["service"]})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
            for a in range(6) for b in range(4)]
    path = tmp_path_factory.mktemp("client-data") / "sums.json"
    path.write_text(json.dumps(rows))
    return path


def tiny_config(tiny_model, data_file, **changes) -> dict:
    config = {"model": str(tiny_model), "data": {"path": str(data_file), "val_fraction": 0.1}, "max_steps": 6,
              "batch_size": 4, "max_length": 64, "eval_every": 3, "lr": 1e-3, "precision": "fp32", "seed": 0}
    config.update(changes)
    return config


def test_wrong_token_is_refused_everywhere(box, runs_dir, tmp_path, tiny_model, data_file):
    wrong = rb.RayEngine({"address": box["address"], "token": "0" * 64, "service": box["service"]})
    with pytest.raises(UserError, match=f"the backend at {box['address']} refused the token"):
        wrong.jobs.json("GET", "/api/jobs/")
    with pytest.raises(UserError, match=f"the backend at {box['service']} refused the token"):
        wrong.samplers()
    assert not wrong.health()["ok"]
    config = tmp_path / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_config(tiny_model, data_file)))
    proc = _cli(["train", str(config), "--run-dir", str(tmp_path / "r")],
                {"TUNELAB_RAY_ADDRESS": box["address"], "TUNELAB_RAY_TOKEN": "0" * 64,
                 "TUNELAB_RAY_SERVICE": box["service"]})
    assert proc.returncode == 2 and "refused the token" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_service_refuses_missing_and_wrong_tokens_on_every_endpoint(box):
    import urllib.error
    import urllib.request

    for method, path in (("GET", "/v1/info"), ("POST", "/v1/call/samplers"), ("POST", "/v1/stream/generate"),
                         ("PUT", "/v1/upload/" + "0" * 64 + "/x.json")):
        for headers, code in (({}, 401), ({"Authorization": "Bearer nope"}, 403)):
            request = urllib.request.Request(box["service"] + path, data=b"{}" if method != "GET" else None,
                                             method=method, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=5)
            assert err.value.code == code, (method, path, headers)


@pytest.fixture(scope="module")
def finished_run(box, tmp_path_factory, tiny_model, data_file):
    """A run trained through the CLI with TUNELAB_BACKEND=ray, in the foreground."""
    import yaml

    client = tmp_path_factory.mktemp("client")
    config = client / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_model, data_file)))
    mirror = client / "runs" / "tiny-remote"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(config), "--run-dir", str(mirror)], cwd=REPO,
                            env=dict(os.environ, TUNELAB_BACKEND="ray", TUNELAB_RAY_ADDRESS=box["address"],
                                     TUNELAB_RAY_TOKEN=box["token"], TUNELAB_RAY_SERVICE=box["service"],
                                     TUNELAB_RUNS_DIR=str(client / "runs")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_row, lines = None, []
    for line in proc.stdout:
        if first_row is None and '"loss"' in line:
            first_row = time.time() - t0
        lines.append(line)
    proc.wait(60)
    FIGURES["CLI submit -> first mirrored loss row (s)"] = round(first_row or -1, 1)
    FIGURES["CLI submit -> finished (s)"] = round(time.time() - t0, 1)
    return {"mirror": mirror, "stdout": lines, "stderr": proc.stderr.read(), "code": proc.returncode,
            "client_runs": client / "runs"}


def test_cli_train_through_the_backend_mirrors_every_row(box, finished_run):
    assert finished_run["code"] == 0, finished_run["stderr"]
    mirror = finished_run["mirror"]
    meta = rb.read_backend(mirror)
    assert meta["job"].startswith("tunelab-") and meta["address"] == box["address"]
    box_dir = Path(meta["box_run_dir"])
    assert box_dir.parent == box["runs"].resolve() and (box_dir / "final").is_dir()
    assert (box_dir / "data" / "sums.json").is_file()  # the data travelled with the run
    box_rows, rows = runs.read_metrics(box_dir), runs.read_metrics(mirror)
    assert rows == box_rows and [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("eval_loss" in r for r in rows)
    assert runs.parse_metrics_lines(finished_run["stdout"]) == rows  # the foreground streamed them all
    status = runs.read_status(mirror)
    assert status["state"] == "finished" and status["remote"]["job_status"] == "SUCCEEDED"
    assert runs.run_config(mirror).max_steps == 6
    out = _cli(["status", str(mirror), "--json"], {"TUNELAB_RAY_ADDRESS": box["address"],
                                                   "TUNELAB_RAY_TOKEN": box["token"],
                                                   "TUNELAB_RAY_SERVICE": box["service"]})
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "finished"


def test_a_client_without_torch_or_ray_follows_the_run(box, finished_run):
    env = dict(os.environ, TUNELAB_RAY_ADDRESS=box["address"], TUNELAB_RAY_TOKEN=box["token"],
               TUNELAB_RAY_SERVICE=box["service"])
    proc = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, "status", str(finished_run["mirror"]), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "finished"


def test_lost_connection_says_reconnecting_then_catches_up(box, finished_run, monkeypatch):
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(finished_run["client_runs"]))
    mirror = finished_run["mirror"]
    rows = runs.read_metrics(mirror)
    runs.truncate_metrics(mirror, 2)  # rows missed while away
    down = rb.RayEngine({"address": f"http://127.0.0.1:{free_port()}", "token": box["token"],
                         "service": f"http://127.0.0.1:{free_port()}"})
    status = down.sync(mirror, force=True)
    assert status["reconnecting"] is True and status["state"] == "finished"
    up = rb.RayEngine({"address": box["address"], "token": box["token"], "service": box["service"]})
    progress = up.run_progress(mirror.name)
    assert progress["reconnecting"] is False and runs.read_metrics(mirror) == rows


def test_generate_and_evaluate_the_remote_run(box, finished_run, engine, data_file):
    from tunelab.core.backends.local import LocalEngine

    box_id = rb.read_backend(finished_run["mirror"])["run_id"]
    model = f"run:{box_id}"
    engine.next_token_distribution(model, "warm up", top=3)  # loads the model on the box
    t0 = time.time()
    pieces = engine.generate(model, "What is 2 plus 3?", max_new_tokens=12)
    first = next(pieces)
    FIGURES["service: time to first token, warm (ms)"] = round((time.time() - t0) * 1000)
    text = first + "".join(pieces)
    os.environ["TUNELAB_RUNS_DIR"], saved = str(box["runs"]), os.environ.get("TUNELAB_RUNS_DIR")
    try:  # the same model, greedy, on this machine: the same words
        assert text == "".join(LocalEngine().generate(model, "What is 2 plus 3?", max_new_tokens=12))
    finally:
        os.environ["TUNELAB_RUNS_DIR"] = saved
    dist = engine.next_token_distribution(model, "What is 2 plus 3?", top=5)
    assert len(dist["tokens"]) == 5 and abs(sum(dist["after"]) + dist["other_after"] - 1) < 1e-3
    ticks = []
    report = engine.evaluate(box_id, data_path=str(data_file), limit=4, max_new_tokens=8,
                             progress=lambda *done: ticks.append(done))
    assert report["data"]["samples"] == 4 and ticks and ticks[-1][0] == ticks[-1][1]
    assert engine.eval_report(box_id)["created_at"] == report["created_at"]
    with pytest.raises(UserError, match="no trained model yet|no run called"):
        engine.describe_model("run:no-such-run")


def test_stop_then_resume_keeps_steps_contiguous(box, engine, tiny_model, data_file):
    run_id = engine.start_run(tiny_config(tiny_model, data_file, max_steps=100000, eval_every=0), name="long")
    mirror = engine.mirror_dir(run_id)
    wait_for(lambda: len([r for r in engine.run_metrics(run_id) if "loss" in r]) >= 3, 120, what="3 rows")
    engine.stop_run(run_id, wait=True)
    stopped = wait_for(lambda: (p := engine.run_progress(run_id))["state"] == "stopped" and p, 90, what="stopped")
    meta = rb.read_backend(mirror)
    checkpoint = runs.latest_checkpoint(meta["box_run_dir"])
    assert checkpoint and int(checkpoint.name.split("-")[1]) == stopped["step"]
    first_rows = len(runs.read_metrics(mirror))
    engine.resume_run(run_id)
    assert rb.read_backend(mirror)["job"].endswith("-2") and rb.read_backend(mirror)["from_step"] == stopped["step"]
    wait_for(lambda: len(engine.run_metrics(run_id)) >= first_rows + 3, 120, what="rows after resume")
    out = _cli(["stop", str(mirror)], {"TUNELAB_RAY_ADDRESS": box["address"], "TUNELAB_RAY_TOKEN": box["token"],
                                       "TUNELAB_RAY_SERVICE": box["service"]})
    assert out.returncode == 0 and "stopped at step" in out.stdout, out.stderr
    wait_for(lambda: engine.run_progress(run_id)["state"] == "stopped", 90, what="stopped again")
    steps = [r["step"] for r in engine.run_metrics(run_id) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped["step"]
    assert engine.run_metrics(run_id) == runs.read_metrics(meta["box_run_dir"])
    t0 = time.time()
    for _ in range(5):
        engine.sync(mirror, force=True)
    rows = len(runs.read_metrics(mirror))
    FIGURES[f"mirror: one catch-up with {rows} rows on the box (ms)"] = round((time.time() - t0) / 5 * 1000)
    listed = {r["run_id"]: r for r in engine.list_runs()}[meta["run_id"]]
    assert listed["box_run_dir"] == meta["box_run_dir"] and listed["run_dir"] == str(mirror)
    assert listed["state"] == "stopped"
    import shutil

    shutil.rmtree(mirror)  # a redeployed app lost its runs folder: the mirror is rebuilt from the box
    assert engine.run_metrics(run_id) == runs.read_metrics(meta["box_run_dir"])
    assert rb.read_backend(mirror)["job"] == rb.job_id_for(meta["run_id"], 2)
    assert engine.run_progress(run_id)["state"] == "stopped"
    box["head"].sample_rss()


@pytest.mark.slow
def test_embedded_model_trains_and_answers_through_the_backend(box, engine, data_file):
    t0 = time.time()
    run_id = engine.start_run({"model": "embedded", "data": {"path": str(data_file)}, "max_steps": 2,
                               "batch_size": 2, "max_length": 64, "eval_every": 0, "precision": "fp32"})
    wait_for(lambda: any("loss" in r for r in engine.run_metrics(run_id)), 300, what="a loss row")
    FIGURES["embedded: submit -> first mirrored loss row (s)"] = round(time.time() - t0, 1)
    box["head"].sample_rss()
    wait_for(lambda: engine.run_progress(run_id)["state"] == "finished", 300, what="finished")
    answer = "".join(engine.generate(f"run:{rb.read_backend(engine.mirror_dir(run_id))['run_id']}",
                                     "What is 1 plus 1?", max_new_tokens=8))
    assert answer.strip()
