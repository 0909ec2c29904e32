"""The TuneLab service (core/service.py): Starlette on uvicorn, served in this process on a free
loopback port. The token check (401 / 403), calls and their errors, streamed answers arriving piece
by piece, uploads into the run store, the verb list derived from the Engine protocol, graceful
shutdown. Offline and fast: a fake engine for the protocol, the tiny model for one real answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tunelab.core import service as sv
from tunelab.core.backends import ray as rb
from tunelab.core.engine import Engine
from tunelab.core.errors import UserError
from tunelab.core.uploads import save_upload

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-" + "t" * 40


class FakeEngine(Engine):
    """The protocol's verbs, answered slowly where an answer streams (``gap`` seconds a piece)."""

    name = "fake"

    def __init__(self, gap: float = 0.2):
        self.gap, self.ticks = gap, []

    def health(self):
        return {"ok": True, "backend": "fake", "where": "this machine", "detail": "fake"}

    def samplers(self):
        return [{"name": "greedy"}]

    def machine(self):
        return {"loss": float("nan"), "where": Path("/box")}  # NaN and a Path cross as they did before

    def detect_format(self, path):
        return Path(path).read_text()  # what the box reads: proves the file arrived there

    def describe_model(self, model):
        raise UserError(f"there is no model called {model}")

    def generate(self, model, prompt, sampler="greedy", params=None, max_new_tokens=128, seed=0):
        for word in prompt.split():
            time.sleep(self.gap)
            yield word

    def evaluate(self, run_id, data_path=None, evaluators=None, limit=None, max_new_tokens=96,
                 evaluator_params=None, progress=None):
        total = limit or 3
        for done in range(1, total + 1):
            time.sleep(self.gap)
            self.ticks.append(done)
            progress(done, total)
        return {"run_id": run_id, "data": {"samples": total}}


@contextlib.contextmanager
def serving(engine=None, token=TOKEN, host="127.0.0.1"):
    server = sv.make_server(host, 0, token=token, service=sv.Service(engine or FakeEngine()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.shutdown(timeout=15)
        thread.join(15)
        server.server_close()


def send(server, method, path, body=None, token=TOKEN, data=None):
    """``(status, JSON body)`` of one request; ``token`` None sends no Authorization header."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def client(server) -> rb.RayEngine:
    """The Ray backend's client, its service part pointed at this server (no Ray needed for these verbs)."""
    return rb.RayEngine({"address": server.url, "token": TOKEN, "service": server.url})


# -- the token ----------------------------------------------------------------------------------------
def test_a_missing_token_is_401_and_a_wrong_one_403_before_any_route():
    with serving() as server:
        for method, path, body in (("GET", "/v1/info", None), ("POST", "/v1/call/samplers", {}),
                                   ("POST", "/v1/stream/generate", {"kwargs": {"model": "m", "prompt": "a"}}),
                                   ("PUT", "/v1/upload/" + "0" * 64 + "/x.json", None), ("GET", "/v1/nothing", None)):
            data = b"[1]" * 1000 if method == "PUT" else None
            assert send(server, method, path, body, token=None, data=data) == (401, {"error": "missing bearer token"})
            assert send(server, method, path, body, token="nope", data=data) == (403, {"error": "invalid bearer token"})
            assert send(server, method, path, body, token=TOKEN[:-1], data=data)[0] == 403  # a prefix is not enough
        assert send(server, "GET", "/v1/nothing") == (404, {"error": "no such endpoint GET /v1/nothing"})
        assert send(server, "GET", "/v1/info")[1]["result"]["health"]["backend"] == "fake"


def test_the_client_names_the_refusal():
    with serving() as server:
        wrong = rb.RayEngine({"address": server.url, "token": "0" * 64, "service": server.url})
        with pytest.raises(rb.Refused, match="refused the token \\(the token is wrong\\)") as err:
            wrong.samplers()
        assert err.value.code == 403


def test_without_a_token_only_on_loopback_and_only_when_asked(monkeypatch, tmp_path):
    for env in ("TUNELAB_RAY_TOKEN", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("TUNELAB_RAY_ALLOW_NO_TOKEN", "1")
    with pytest.raises(UserError, match="needs a token"):
        sv.make_server("0.0.0.0", 0, service=object())
    with serving(token=None) as server:
        assert send(server, "POST", "/v1/call/samplers", {}, token=None) == (200, {"result": [{"name": "greedy"}]})


# -- calls --------------------------------------------------------------------------------------------
def test_calls_answer_and_fail_as_the_client_expects():
    with serving() as server:
        engine = client(server)
        assert engine.samplers() == [{"name": "greedy"}]
        assert engine.machine()["where"] == "/box" and engine.machine()["loss"] != engine.machine()["loss"]  # NaN
        with pytest.raises(UserError, match="there is no model called nope"):
            engine.describe_model("nope")
        assert send(server, "POST", "/v1/call/describe_model", {"kwargs": {"model": "x"}}) == (
            400, {"error": "there is no model called x", "user_error": True})
        for verb in ("start_run", "install_plugin", "export_run", "load", "_run_dir", "generate"):
            code, body = send(server, "POST", f"/v1/call/{verb}", {"kwargs": {}})
            assert code == 400 and body["error"] == f"the TuneLab service has no verb {verb!r}", verb
        code, body = send(server, "POST", "/v1/call/samplers", {"kwargs": {"surprise": 1}})
        assert code == 400 and body["error"].startswith("bad request: TypeError") and body["user_error"]
        code, body = send(server, "POST", "/v1/call/samplers", data=b"{not json")
        assert code == 400 and body["error"].startswith("bad request: JSONDecodeError")


def test_a_slow_answer_does_not_hold_up_another_request():
    with serving(FakeEngine(gap=0.5)) as server:
        pieces = []
        streaming = threading.Thread(target=lambda: pieces.extend(client(server).generate("m", "a b c d")))
        streaming.start()
        time.sleep(0.3)
        t0 = time.time()
        assert client(server).samplers() == [{"name": "greedy"}]
        quick = time.time() - t0
        streaming.join(10)
        assert pieces == ["a", "b", "c", "d"] and quick < 0.4, quick


# -- streamed answers -------------------------------------------------------------------------------
def test_a_streamed_answer_arrives_piece_by_piece():
    with serving(FakeEngine(gap=0.25)) as server:
        conn = http.client.HTTPConnection(*server.server_address, timeout=10)
        t0 = time.time()
        conn.request("POST", "/v1/stream/generate", json.dumps({"kwargs": {"model": "m", "prompt": "one two three four"}}),
                     {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "application/x-ndjson"
        assert response.getheader("Transfer-Encoding") == "chunked"
        arrivals = []
        while line := response.readline():
            arrivals.append((time.time() - t0, json.loads(line)))
        conn.close()
    assert [item for _, item in arrivals] == [{"piece": w} for w in ("one", "two", "three", "four")]
    # each piece left when it was made: the first long before the last, about one gap apart
    assert arrivals[0][0] < 0.6 and arrivals[-1][0] - arrivals[0][0] > 0.6, arrivals


def test_progress_ticks_then_the_result_through_the_client():
    engine = FakeEngine(gap=0.05)
    with serving(engine) as server:
        ticks = []
        report = client(server).evaluate("run-1", limit=3, progress=lambda *done: ticks.append(done))
    assert ticks == [(1, 3), (2, 3), (3, 3)] and report == {"run_id": "run-1", "data": {"samples": 3}}


def test_a_streaming_verb_is_checked_before_the_stream_starts():
    with serving() as server:
        assert send(server, "POST", "/v1/stream/describe_model", {"kwargs": {}}) == (
            404, {"error": "no streaming verb 'describe_model'"})
        code, body = send(server, "POST", "/v1/stream/generate", {"kwargs": {"model": "m"}})  # no prompt
        assert code == 400 and "missing a required argument: 'prompt'" in body["error"]
        code, body = send(server, "POST", "/v1/stream/evaluate", {"kwargs": {"run_id": "r",
                                                                            "data_path": "upload:" + "a" * 64 + "/x"}})
        assert code == 400 and body["error"] == "the uploaded file x is no longer on the box; upload it again"


def test_an_error_during_a_stream_is_its_last_line():
    class Failing(FakeEngine):
        def generate(self, model, prompt, **kwargs):
            yield "first"
            raise UserError("the model ran out of words")

    with serving(Failing()) as server:
        pieces = client(server).generate("m", "x")
        assert next(pieces) == "first"
        with pytest.raises(UserError, match="the model ran out of words"):
            next(pieces)


def test_work_behind_a_stream_stops_when_the_client_goes():
    engine = FakeEngine(gap=0.2)
    with serving(engine) as server:
        conn = http.client.HTTPConnection(*server.server_address, timeout=10)
        conn.request("POST", "/v1/stream/evaluate", json.dumps({"kwargs": {"run_id": "r", "limit": 30}}),
                     {"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert json.loads(response.readline()) == {"progress": [1, 30]}
        conn.close()
        time.sleep(1.5)
        stopped_at = len(engine.ticks)
        time.sleep(1.0)
    assert stopped_at < 10 and len(engine.ticks) == stopped_at, engine.ticks


def test_shutdown_lets_an_answer_under_way_finish():
    with serving(FakeEngine(gap=0.3)) as server:
        pieces = client(server).generate("m", "a b c d e")
        assert next(pieces) == "a"
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        t0 = time.time()
        assert list(pieces) == ["b", "c", "d", "e"]  # graceful: the stream under way runs to its end
        stopper.join(sv.GRACE_S + 5)
        assert not stopper.is_alive() and time.time() - t0 < sv.GRACE_S
        with pytest.raises(rb.BackendUnreachable):
            client(server).samplers()  # no new requests after the shutdown


# -- uploads ----------------------------------------------------------------------------------------
def test_an_upload_lands_in_the_run_stores_uploads_folder(runs_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_UPLOADS_DIR", raising=False)
    local = tmp_path / "my data.jsonl"
    local.write_text('{"text": "hello"}\n')
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    with serving() as server:
        engine = client(server)
        assert engine.detect_format(local) == '{"text": "hello"}\n'  # the box read the uploaded copy
        kept = runs_dir / "uploads" / f"{digest[:32]}-my_data.jsonl"
        assert kept.is_file() and sorted(p.name for p in (runs_dir / "uploads").iterdir()) == [kept.name]
        assert engine._uploads[next(iter(engine._uploads))] == f"upload:{digest}/my_data.jsonl"  # the protocol's name
        # the same bytes again: one file, a new life, nothing written
        os.utime(kept, (1, 1))
        assert send(server, "PUT", f"/v1/upload/{digest}/my_data.jsonl", data=local.read_bytes()) == (
            200, {"result": f"upload:{digest}/my_data.jsonl"})
        assert kept.stat().st_mtime > time.time() - 60


def test_uploads_expire_by_the_dashboards_rule(runs_dir, monkeypatch):
    monkeypatch.delenv("TUNELAB_UPLOADS_DIR", raising=False)
    old_dashboard = save_upload("old.json", b"[1]")
    old_box = sv.upload_file("b" * 64, "old-box.json")
    old_box.write_text("[2]")
    for path in (old_dashboard, old_box):
        os.utime(path, (time.time() - 3 * 86400,) * 2)  # past the default 24 h
    content = b'[{"text": "new"}]'
    digest = hashlib.sha256(content).hexdigest()
    with serving() as server:
        assert send(server, "PUT", f"/v1/upload/{digest}/new.json", data=content)[0] == 200
        assert not old_dashboard.exists() and not old_box.exists()  # both kinds, the same rule
        # a file in use starts a new life: it is not expired while the learner works with it
        kept = sv.upload_file(digest, "new.json")
        os.utime(kept, (time.time() - 3 * 86400,) * 2)
        assert send(server, "POST", "/v1/call/detect_format",
                    {"kwargs": {"path": f"upload:{digest}/new.json"}}) == (200, {"result": content.decode()})
        assert kept.stat().st_mtime > time.time() - 60
        save_upload("another.json", b"[3]")
        assert kept.is_file()


def test_an_upload_that_changed_or_is_too_large_is_refused(runs_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_MB", str(4096 / 2**20))  # 4 KiB
    with serving() as server:
        code, body = send(server, "PUT", "/v1/upload/" + "0" * 64 + "/x.json", data=b"[1, 2]")
        assert code == 400 and "sha256 mismatch" in body["error"]
        big = b"x" * 10_000
        code, body = send(server, "PUT", f"/v1/upload/{hashlib.sha256(big).hexdigest()}/big.json", data=big)
        assert code == 413 and "the box takes uploads up to 0.00390625 MB" in body["error"], body
        code, body = send(server, "PUT", "/v1/upload/" + "0" * 64 + "/..", data=b"[]")
        assert code == 400 and "bad upload name" in body["error"]
        uploads = runs_dir / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())  # nothing half-written is left
        # the client reads the box's limit first: a refusal in the middle of a large send would reach
        # it as a connection reset, not as this sentence
        local = runs_dir.parent / "big.json"
        local.write_bytes(b"[" + b"1," * 20_000 + b"1]")
        with pytest.raises(UserError, match="big.json is 0.0 MB; the box at .* takes uploads up to 0.00390625 MB"):
            client(server).detect_format(local)
        assert send(server, "GET", "/v1/info")[1]["result"]["max_upload_bytes"] == 4096


# -- the verbs --------------------------------------------------------------------------------------
def test_the_verbs_are_the_engine_protocols_public_methods():
    public = {name for name in dir(Engine) if not name.startswith("_") and callable(getattr(Engine, name))}
    assert sv.NOT_SERVED <= public  # every exclusion names a verb of the protocol (none left stale)
    assert sv.ENGINE_VERBS | sv.STREAM_VERBS == public - sv.NOT_SERVED
    assert not sv.ENGINE_VERBS & sv.STREAM_VERBS and sv.STREAM_VERBS == {"generate", "evaluate"}
    # training, its control and anything that changes the box stay off the service
    assert {"start_run", "resume_run", "stop_run", "measure_memory", "export_run", "install_plugin",
            "set_plugin_enabled"} <= sv.NOT_SERVED
    # every verb the Ray client sends to /v1/call is served
    called = set()
    fake = rb.RayEngine({"address": "http://127.0.0.1:1", "token": "t"})
    fake.call = lambda verb, **kwargs: called.add(verb) or {}
    for verb in ("samplers", "plugins", "data_formats", "evaluators", "machine", "capabilities"):
        getattr(fake, verb)()
    assert called <= sv.ENGINE_VERBS | set(sv.BOX_VERBS)


# -- the real engine and the real command ------------------------------------------------------------
def test_the_tiny_model_answers_through_the_client_as_it_does_here(tiny_model):
    from tunelab.core.backends.local import LocalEngine

    local = LocalEngine({"standby": False})
    with serving(local) as server:
        engine = client(server)
        engine.next_token_distribution(str(tiny_model), "warm up", top=3)
        t0 = time.time()
        pieces = engine.generate(str(tiny_model), "What is 2 plus 3?", max_new_tokens=12)
        first = next(pieces)
        first_ms = (time.time() - t0) * 1000
        remote = [first, *pieces]
    assert len(remote) > 1 and "".join(remote) == "".join(
        local.generate(str(tiny_model), "What is 2 plus 3?", max_new_tokens=12))
    print(f"\nservice on uvicorn: first piece of a warm tiny-model answer in {first_ms:.0f} ms")


def test_python_m_core_serve_answers_and_stops_on_sigterm(runs_dir, tmp_path):
    port = _free_port()
    env = dict(os.environ, TUNELAB_RAY_TOKEN=TOKEN, TUNELAB_RUNS_DIR=str(runs_dir))
    log = tmp_path / "service.log"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    http = rb.Http(f"http://127.0.0.1:{port}", TOKEN, "the TuneLab service", timeout=2)
    try:
        info = None
        while info is None and time.time() - t0 < 60 and proc.poll() is None:
            try:
                info = http.json("GET", "/v1/info")["result"]
            except rb.BackendUnreachable:
                time.sleep(0.1)
        up_s = time.time() - t0
        assert info and info["runs_dir"] == str(runs_dir.resolve()), log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(sv.GRACE_S + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"uploads in {runs_dir / 'uploads'}" in text and '"GET /v1/info HTTP/1.1" 200' in text, text
    assert TOKEN not in text and "Traceback" not in text
    print(f"\npython -m tunelab serve: answering after {up_s:.1f} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
