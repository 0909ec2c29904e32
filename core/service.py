"""The TuneLab service on a GPU box: the engine's verbs over HTTP, behind the cluster's token.

``python -m core serve --host 0.0.0.0 --port 8266`` on the box (next to ``ray start --head``).
It holds one :class:`core.engine.LocalEngine`, so the models a learner clicks on stay loaded
(warm) between requests, and it gives the Ray backend (``core.backends.ray``) what a job alone
cannot: the box's run folders (config, status, metrics, the STOP file that makes a worker save a
checkpoint before it exits), uploads of data files, and streamed answers.

Why a plain threaded HTTP server and not a Ray Serve deployment: Serve's proxy does not check
Ray's token (every endpoint here must), it adds a controller and proxy actors (memory and
seconds of start-up on a small box), and one process with one warm model cache is what a single
GPU box needs. Training itself runs as Ray Jobs, never in this process.

Protocol (every request needs ``Authorization: Bearer <token>``: 401 without, 403 wrong)::

    GET  /v1/info                       where runs live on the box, its Python, the engine's health
    POST /v1/call/<verb>  {"kwargs"}    -> {"result": ...} | 400 {"error", "user_error": true}
    POST /v1/stream/<verb> {"kwargs"}   -> one JSON per line: {"piece"} | {"progress"} | {"result"} | {"error"}
    PUT  /v1/upload/<sha256>/<name>     the file's bytes -> {"path": "upload:<sha256>/<name>"}

A path argument ``upload:<sha256>/<name>`` means a file uploaded before. Anyone holding the
token can already run any code on the cluster through Ray Jobs, so the token is the whole trust
boundary: keep it secret and put TLS in front (README, "Train on a GPU box").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import shutil
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .errors import UserError

API = "/v1"
DEFAULT_PORT = 8266
UPLOAD_RE = re.compile(r"^upload:([0-9a-f]{64})/([^/\\]{1,200})$")
# The facade verbs a client may call (LocalEngine methods), and the run-file verbs of this service.
ENGINE_VERBS = {"health", "capabilities", "plugins", "data_formats", "samplers", "evaluators", "describe_model",
                "tokenize", "render_chat", "detect_format", "check_data", "load_records", "encode_example",
                "estimate_memory", "machine", "list_runs", "find_run", "run_progress", "run_metrics",
                "run_config", "run_log", "next_token_distribution", "eval_report"}
STREAM_VERBS = {"generate", "evaluate"}
PATH_ARGS = ("path", "data_path")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def service_token() -> str | None:
    """The token every request must carry: ``TUNELAB_RAY_TOKEN``, else Ray's own
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), so the box needs one secret."""
    for env in ("TUNELAB_RAY_TOKEN", "RAY_AUTH_TOKEN"):
        if os.environ.get(env, "").strip():
            return os.environ[env].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def uploads_dir() -> Path:
    """Where uploaded data files are kept on the box, by sha256."""
    from .runs import runs_root

    return runs_root() / ".uploads"  # beside the runs: shared storage on a cluster holds both


class Service:
    """What the HTTP handler calls: a warm LocalEngine plus the box's run files."""

    def __init__(self, engine=None):
        from .engine import LocalEngine

        # no standby worker: on the box, training runs as Ray jobs, not through runs.launch
        self.engine = engine or LocalEngine({"standby": False})

    # -- paths ---------------------------------------------------------------------------------
    def resolve(self, value):
        """``upload:<sha>/<name>`` -> the uploaded file on this box; anything else unchanged."""
        match = UPLOAD_RE.match(value) if isinstance(value, str) else None
        if not match:
            return value
        path = uploads_dir() / match[1] / match[2]
        if not path.is_file():
            raise UserError(f"the uploaded file {match[2]} is no longer on the box; upload it again")
        return str(path)

    def store_upload(self, digest: str, name: str, stream, length: int) -> str:
        """Write an upload (checked against its sha256) and return its ``upload:`` name."""
        ref = f"upload:{digest}/{name}"
        if not UPLOAD_RE.match(ref):
            raise UserError(f"bad upload name {name!r}: a sha256 and a file name without slashes")
        target = uploads_dir() / digest / name
        if target.is_file():
            return ref  # content-addressed: the same bytes were sent before
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, sha, left = target.with_name(f".{name}.{threading.get_ident()}.tmp"), hashlib.sha256(), length
        with tmp.open("wb") as out:
            while left > 0:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if left or sha.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise UserError(f"the upload of {name} arrived incomplete or changed (sha256 mismatch); send it again")
        os.replace(tmp, target)
        return ref

    # -- run files -----------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        return self.engine._run_dir(run_id)

    def info(self) -> dict:
        """What a client needs to submit jobs: the box's runs folder and Python, and its health."""
        from . import __version__
        from .runs import REPO_ROOT, runs_root

        return {"version": __version__, "runs_dir": str(runs_root().resolve()), "python": sys.executable,
                "repo": str(REPO_ROOT), "health": self.engine.health()}

    def prepare_run(self, config: dict, name: str | None = None) -> dict:
        """Make the run folder on the box, with the data file inside it, for a job to train in."""
        from . import data, runs
        from .config import RunConfig

        config = json.loads(json.dumps(config))
        source = Path(self.resolve(config.get("data", {}).get("path", "")))
        data.check_path(source)
        cfg = RunConfig.from_dict(config, "the planned run")
        run_dir = runs.create_run(cfg, name).resolve()
        # the run keeps its own copy: a resume weeks later must not depend on the uploads folder
        (run_dir / "data").mkdir(exist_ok=True)
        kept = run_dir / "data" / source.name
        shutil.copyfile(source, kept)
        cfg.data.path = str(kept)
        runs.write_atomic(run_dir / "config.yaml", cfg.to_yaml())
        runs.write_status(run_dir, job_attempt=1, job_from_step=0)  # any client can find the job from these
        return {"run_id": run_dir.name, "run_dir": str(run_dir), "config": cfg.to_dict()}

    def prepare_resume(self, run_id: str) -> dict:
        """Ready a stopped or interrupted run for its next job; returns the checkpoint step it resumes from."""
        from . import runs

        run_dir = self._run_dir(run_id)
        status = runs.read_status(run_dir)
        if status["state"] == "finished":
            raise UserError(f"run {run_id} has already finished; start a new run to train more")
        if status["state"] in runs.ACTIVE and runs.pid_alive(status.get("pid")):
            raise UserError(f"run {run_id} is still {status['state']} (pid {status['pid']})")
        (run_dir / "STOP").unlink(missing_ok=True)
        checkpoint = runs.latest_checkpoint(run_dir)
        from_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
        attempt = int(status.get("job_attempt") or 1) + 1
        runs.write_status(run_dir, state="queued", pid=None, error=None, interrupted=False,
                          job_attempt=attempt, job_from_step=from_step)
        return {"run_id": run_id, "run_dir": str(run_dir), "checkpoint_step": from_step, "attempt": attempt}

    def request_stop(self, run_id: str) -> dict:
        """The STOP file the worker checks after every step (it checkpoints, then exits)."""
        from . import runs

        runs.request_stop(self._run_dir(run_id))
        return runs.read_status(self._run_dir(run_id))

    def run_status(self, run_id: str) -> dict:
        """The box's view of the run (its worker's pid is checked here, where it runs)."""
        from . import runs

        return runs.read_status(self._run_dir(run_id))

    def run_metrics(self, run_id: str, after_line: int = 0) -> dict:
        """Rows of the box's ``metrics.jsonl`` from line ``after_line`` on (the mirror's fallback
        when the job's log is gone, e.g. after the cluster restarted)."""
        from . import runs

        path = self._run_dir(run_id) / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return {"rows": runs.parse_metrics_lines(lines[after_line:]), "lines": len(lines)}

    # -- dispatch ------------------------------------------------------------------------------
    def call(self, verb: str, kwargs: dict):
        """Run one verb with plain-data arguments (upload references resolved) and return its result."""
        kwargs = {k: (self.resolve(v) if k in PATH_ARGS else v) for k, v in (kwargs or {}).items()}
        if verb in ("info", "prepare_run", "prepare_resume", "request_stop", "run_status", "run_metrics"):
            return getattr(self, verb)(**kwargs)
        if verb in ENGINE_VERBS:
            return getattr(self.engine, verb)(**kwargs)
        raise UserError(f"the TuneLab service has no verb {verb!r}")

    def stream(self, verb: str, kwargs: dict, send) -> None:
        """Run a streaming verb, calling ``send(dict)`` for every piece or progress tick."""
        kwargs = {k: (self.resolve(v) if k in PATH_ARGS else v) for k, v in (kwargs or {}).items()}
        if verb == "generate":
            for piece in self.engine.generate(**kwargs):
                send({"piece": piece})
        elif verb == "evaluate":
            report = self.engine.evaluate(**kwargs, progress=lambda *done: send({"progress": list(done)}))
            send({"result": report})
        else:
            raise UserError(f"the TuneLab service has no streaming verb {verb!r}")


class Handler(BaseHTTPRequestHandler):
    """One request: the token checked first, then a route; ``service`` and ``token`` are set by
    :func:`make_handler` on a subclass."""

    server_version = "TuneLab"
    service: Service
    token: str | None = None

    def log_message(self, fmt, *args):  # one line per request on stderr, no tokens in it
        sys.stderr.write(f"[tunelab-service] {self.address_string()} {fmt % args}\n")

    def _authorized(self) -> bool:
        if self.token is None:
            return True  # only reachable when started on loopback with TUNELAB_RAY_ALLOW_NO_TOKEN=1
        header = self.headers.get("Authorization", "")
        if not header:
            self._json(401, {"error": "missing bearer token"})
            return False
        if not hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
            self._json(403, {"error": "invalid bearer token"})
            return False
        return True

    def _json(self, code: int, body) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def _guard(self, work) -> None:
        """A UserError is a 400 with its sentence; anything else a 500 with a short message."""
        try:
            work()
        except UserError as exc:
            self._json(400, {"error": str(exc), "user_error": True})
        except (ValueError, TypeError, KeyError) as exc:
            self._json(400, {"error": f"bad request: {type(exc).__name__}: {exc}", "user_error": True})
        except Exception as exc:  # keep serving; the box's log has the traceback
            traceback.print_exc()
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self):
        if not self._authorized():
            return
        if self.path == f"{API}/info":
            return self._guard(lambda: self._json(200, {"result": self.service.info()}))
        self._json(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self):
        if not self._authorized():
            return
        if self.path.startswith(f"{API}/call/"):
            verb = self.path[len(f"{API}/call/"):]
            return self._guard(lambda: self._json(200, {"result": self.service.call(verb, self._body().get("kwargs"))}))
        if self.path.startswith(f"{API}/stream/"):
            return self._stream(self.path[len(f"{API}/stream/"):], self._body().get("kwargs"))
        self._json(404, {"error": f"no such endpoint {self.path}"})

    def do_PUT(self):
        if not self._authorized():
            return
        parts = self.path[len(f"{API}/upload/"):].split("/") if self.path.startswith(f"{API}/upload/") else []
        if len(parts) != 2:
            return self._json(404, {"error": f"no such endpoint {self.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        self._guard(lambda: self._json(200, {"result": self.service.store_upload(*parts, self.rfile, length)}))

    def _stream(self, verb: str, kwargs) -> None:
        if verb not in STREAM_VERBS:
            return self._json(404, {"error": f"no streaming verb {verb!r}"})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()  # no length: the answer ends when the connection closes
        self.close_connection = True

        def send(obj):
            self.wfile.write((json.dumps(obj, default=str) + "\n").encode())
            self.wfile.flush()
        try:
            self.service.stream(verb, kwargs, send)
        except UserError as exc:
            send({"error": str(exc), "user_error": True})
        except Exception as exc:
            traceback.print_exc()
            send({"error": f"{type(exc).__name__}: {exc}"})


def make_handler(service: Service, token: str | None):
    """The request handler class bound to one service and its token."""
    return type("BoundHandler", (Handler,), {"service": service, "token": token})


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                service: Service | None = None) -> ThreadingHTTPServer:
    """The service's HTTP server (not yet serving). Refuses to listen without a token unless the
    address is loopback and ``TUNELAB_RAY_ALLOW_NO_TOKEN=1``."""
    token = token or service_token()
    if not token and not (is_loopback(host) and os.environ.get("TUNELAB_RAY_ALLOW_NO_TOKEN") == "1"):
        raise UserError("the TuneLab service needs a token: set TUNELAB_RAY_TOKEN (or RAY_AUTH_TOKEN, or run "
                        "`ray get-auth-token --generate`); without one, anyone who reaches the port runs the engine")
    server = ThreadingHTTPServer((host, port), make_handler(service or Service(), token))
    server.daemon_threads = True
    return server


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted (``python -m core serve``)."""
    try:
        server = make_server(host, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    from .runs import runs_root

    print(f"TuneLab service on http://{host}:{port} (runs in {runs_root().resolve()})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
