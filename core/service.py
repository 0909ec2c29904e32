"""The TuneLab service on a GPU box: the engine's verbs over HTTP, behind the cluster's token.

``python -m tunelab serve --host 0.0.0.0 --port 8266`` on the box (next to ``ray start --head``).
It holds one :class:`tunelab.core.backends.local.LocalEngine`, so the models a learner clicks on stay
loaded (warm) between requests, and it gives the Ray backend (``tunelab.core.backends.ray``) what a job
alone cannot: the box's run folders (config, status, metrics, the STOP file that makes a worker
save a checkpoint before it exits), uploads of data files, and streamed answers.

A Starlette app on uvicorn (both come with Streamlit, so every TuneLab install has them), not a Ray
Serve deployment: Serve's proxy does not check Ray's token (every endpoint here must), it adds a
controller and proxy actors (memory and seconds of start-up on a small box), and one process with
one warm model cache is what a single GPU box needs. Training itself runs as Ray Jobs, never in
this process. The engine's calls block (a model writes for seconds), so they run in Starlette's
thread pool, never on the event loop: a long answer does not hold up another request.

Protocol (every request needs ``Authorization: Bearer <token>``: 401 without, 403 wrong)::

    GET  /v1/info                       where runs live on the box, its Python, the engine's health
    POST /v1/call/<verb>  {"kwargs"}    -> {"result": ...} | 400 {"error", "user_error": true}
    POST /v1/stream/<verb> {"kwargs"}   -> one JSON per line: {"piece"} | {"progress"} | {"result"} | {"error"}
    PUT  /v1/upload/<sha256>/<name>     the file's bytes -> {"result": "upload:<sha256>/<name>"}

The verbs are the protocol's own: the public methods of :class:`tunelab.core.engine.Engine`, less
:data:`NOT_SERVED` (see there why each one is left out), plus the run-file verbs of
:data:`BOX_VERBS`. A verb whose answer comes in pieces (an ``Iterator`` result, or a ``progress``
callback) is a streaming verb; the others are calls.

A path argument ``upload:<sha256>/<name>`` means a file uploaded before. Uploads are kept in the
run store's uploads folder (:func:`tunelab.core.uploads.uploads_dir`), beside the dashboard's, and expire
by the same rule (``TUNELAB_UPLOAD_TTL_H`` after their last upload or use). Anyone holding the
token can already run any code on the cluster through Ray Jobs, so the token is the whole trust
boundary: keep it secret and put TLS in front (README, "Train on a GPU box").
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import os
import queue
import re
import secrets
import shutil
import socket
import sys
import threading
import traceback
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import __version__, data, runs, workers
from .backends.local import LocalEngine
from .backends.ray import DEFAULT_PORT, is_loopback
from .config import RunConfig
from .engine import Engine
from .errors import UserError
from .paths import REPO_ROOT, runs_root
from .uploads import expire_uploads, uploads_dir

API = "/v1"
UPLOAD_RE = re.compile(r"^upload:([0-9a-f]{64})/([^/\\]{1,200})$")
PATH_ARGS = ("path", "data_path")
GRACE_S = 5  # on SIGTERM / Ctrl-C: answers under way get this long to finish, then they are cut
MAX_UPLOAD_ENV = "TUNELAB_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 512.0

# Verbs of the Engine protocol that the service does not answer. Everything else public on
# core.engine.Engine is served, so a verb added to the protocol reaches the box without an edit here.
NOT_SERVED = {
    # training and its control are Ray Jobs; the service prepares them instead (BOX_VERBS)
    "start_run", "resume_run", "stop_run",
    # an experiment's runs are Ray Jobs the client submits together, its record in the client's mirror folder
    "start_experiment", "experiment", "list_experiments", "stop_experiment",
    # a real training step, run in a worker process: work for a job, not for the service's process
    "measure_memory",
    # writes a model to any folder on the box; the client says to export there (`python -m tunelab export`)
    "export_run",
    # deletes the box's run folders, the source of truth: done on the box (`python -m tunelab delete`)
    "delete_run",
    # change (or browse for changing) the box's installed plugins: done on the box (`python -m tunelab plugins`)
    "set_plugin_enabled", "install_plugin", "catalog",
    # answered by the client itself, on the dashboard's machine: pure rules and the dashboard's own files
    "plan_summary", "loop_source", "save_upload", "allowed_data", "data_choices", "embedded_ready",
    "experiment_settings", "plan_experiment",
}
# The service's own verbs: the box's run folders, for the jobs the client submits. ``run_metrics``
# here (rows from a line on, read from the box's metrics file) answers in place of the engine's.
BOX_VERBS = ("info", "prepare_run", "prepare_resume", "request_stop", "run_status", "run_metrics")


def protocol_verbs() -> set[str]:
    """The verbs of the protocol: the public methods of :class:`tunelab.core.engine.Engine`."""
    return {name for name, _ in inspect.getmembers(Engine, inspect.isfunction) if not name.startswith("_")}


def _streams(verb: str) -> bool:
    """Whether a verb's answer comes in pieces: an ``Iterator`` of them, or ticks of a ``progress`` callback."""
    signature = inspect.signature(getattr(Engine, verb))
    return "progress" in signature.parameters or "Iterator" in str(signature.return_annotation)


STREAM_VERBS = {verb for verb in protocol_verbs() - NOT_SERVED if _streams(verb)}
ENGINE_VERBS = protocol_verbs() - NOT_SERVED - STREAM_VERBS


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


def max_upload_bytes() -> int:
    """The largest upload accepted: ``TUNELAB_MAX_UPLOAD_MB`` (default 512; a bad value means the default)."""
    try:
        megabytes = float(os.environ.get(MAX_UPLOAD_ENV) or DEFAULT_MAX_UPLOAD_MB)
    except ValueError:
        megabytes = DEFAULT_MAX_UPLOAD_MB
    return int(max(0.0, megabytes) * 2**20)


def upload_file(digest: str, name: str) -> Path:
    """Where the upload of ``name`` with this sha256 is kept: ``<uploads>/<sha256, 32 hex>-<name>``.

    A plain file in :func:`tunelab.core.uploads.uploads_dir`, so :func:`tunelab.core.uploads.expire_uploads` expires
    it like a dashboard upload (32 hex digits of the hash keep the name under 255 bytes)."""
    return uploads_dir() / f"{digest[:32]}-{name}"


class UploadTooLarge(UserError):
    """An upload over :func:`max_upload_bytes` (HTTP 413)."""


class _ClientGone(Exception):
    """The client of a streamed answer went away: the work behind it stops at its next tick."""


async def _receive_upload(chunks, tmp: Path | None, limit: int, name: str) -> str:
    """Write the async iterable ``chunks`` to ``tmp`` (None: read and drop them), refusing more than
    ``limit`` bytes; returns the sha256 of what was written. File writes run in the thread pool."""
    sha, size, out = hashlib.sha256(), 0, None

    def take(chunk: bytes) -> None:  # hashing and writing both off the event loop
        sha.update(chunk)
        out.write(chunk)

    if tmp is not None:
        await run_in_threadpool(tmp.parent.mkdir, parents=True, exist_ok=True)
        out = await run_in_threadpool(tmp.open, "wb")
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"{name} is over the box's upload limit of {limit / 2**20:g} MB "
                                     f"({MAX_UPLOAD_ENV} on the box)")
            if out is not None:
                await run_in_threadpool(take, chunk)
    finally:
        if out is not None:
            await run_in_threadpool(out.close)
    return sha.hexdigest()


def _keep_upload(tmp: Path | None, target: Path, got: str, digest: str, name: str) -> None:
    """Move a received upload into place (atomic: a reader never sees half of one), or give one
    sent again a new life (as :func:`tunelab.core.uploads.save_upload`); then expire the old uploads."""
    if tmp is None:
        try:
            os.utime(target)
        except FileNotFoundError:  # expired since it was found: the bytes were not kept
            raise UserError(f"the upload of {name} expired while it was sent; send it again") from None
    elif got != digest:
        raise UserError(f"the upload of {name} arrived incomplete or changed (sha256 mismatch); send it again")
    else:
        os.replace(tmp, target)
    expire_uploads(keep=target)


class Service:
    """What the HTTP endpoints call: a warm LocalEngine plus the box's run files."""

    def __init__(self, engine=None):
        # no standby worker: on the box, training runs as Ray jobs, not through workers.launch
        self.engine = engine or LocalEngine({"standby": False})

    # -- paths ---------------------------------------------------------------------------------
    def resolve(self, value):
        """``upload:<sha>/<name>`` -> the uploaded file on this box; anything else unchanged.
        Using an upload gives it a new life: it expires a TTL after its last use, not its first."""
        match = UPLOAD_RE.match(value) if isinstance(value, str) else None
        if not match:
            return value
        path = upload_file(match[1], match[2])
        try:
            os.utime(path)
            if path.is_file():
                return str(path)
        except OSError:  # expired (or never sent)
            pass
        raise UserError(f"the uploaded file {match[2]} is no longer on the box; upload it again")

    def arguments(self, method, kwargs) -> dict:
        """``kwargs`` with upload references resolved, checked against ``method``'s signature
        (a wrong argument is a TypeError, answered as a bad request before any work)."""
        if not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be an object, not {type(kwargs).__name__}")
        kwargs = {k: (self.resolve(v) if k in PATH_ARGS else v) for k, v in kwargs.items()}
        inspect.signature(method).bind(**kwargs)
        return kwargs

    async def store_upload(self, digest: str, name: str, chunks, length: int | None = None) -> str:
        """Keep an upload arriving as the async iterable ``chunks`` (checked against its sha256 and
        :func:`max_upload_bytes`), expire old uploads, and return its ``upload:`` name."""
        ref, limit = f"upload:{digest}/{name}", max_upload_bytes()
        if not UPLOAD_RE.match(ref) or name in (".", ".."):
            raise UserError(f"bad upload name {name!r}: a sha256 and a file name without slashes")
        if length is not None and length > limit:
            raise UploadTooLarge(f"{name} is {length / 2**20:.1f} MB; the box takes uploads up to "
                                 f"{limit / 2**20:g} MB ({MAX_UPLOAD_ENV} on the box)")
        target = upload_file(digest, name)
        # content-addressed: bytes sent before are read and dropped, not written again
        tmp = None if target.is_file() else target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            got = await _receive_upload(chunks, tmp, limit, name)
            await run_in_threadpool(_keep_upload, tmp, target, got, digest, name)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # gone already once kept; a failed upload leaves nothing
        return ref

    # -- run files -----------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        return self.engine._run_dir(run_id)

    def info(self) -> dict:
        """What a client needs: the box's runs folder and Python (to submit jobs), its health, and
        the largest upload it takes (checked by the client before sending)."""
        return {"version": __version__, "runs_dir": str(runs_root().resolve()), "python": sys.executable,
                "repo": str(REPO_ROOT), "health": self.engine.health(), "max_upload_bytes": max_upload_bytes()}

    def prepare_run(self, config: dict, name: str | None = None) -> dict:
        """Make the run folder on the box, with the data file inside it, for a job to train in."""
        config = json.loads(json.dumps(config))
        source = Path(self.resolve(config.get("data", {}).get("path", "")))
        data.check_path(source)
        cfg = RunConfig.from_dict(config, "the planned run")
        run_dir = runs.create_run(cfg, name).resolve()
        # the run keeps its own copy: a resume weeks later must not depend on the uploads folder
        (run_dir / "data").mkdir(exist_ok=True)
        uploaded = UPLOAD_RE.match(str(config.get("data", {}).get("path", "")))
        kept = run_dir / "data" / (uploaded[2] if uploaded else source.name)  # the name the learner gave it
        shutil.copyfile(source, kept)
        cfg.data.path = str(kept)
        runs.write_atomic(run_dir / "config.yaml", cfg.to_yaml())
        runs.write_status(run_dir, job_attempt=1, job_from_step=0)  # any client can find the job from these
        return {"run_id": run_dir.name, "run_dir": str(run_dir), "config": cfg.to_dict()}

    def prepare_resume(self, run_id: str) -> dict:
        """Ready a stopped or interrupted run for its next job; returns the checkpoint step it resumes from."""
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
        workers.request_stop(self._run_dir(run_id))
        return runs.read_status(self._run_dir(run_id))

    def run_status(self, run_id: str) -> dict:
        """The box's view of the run (its worker's pid is checked here, where it runs)."""
        return runs.read_status(self._run_dir(run_id))

    def run_metrics(self, run_id: str, after_line: int = 0) -> dict:
        """Rows of the box's ``metrics.jsonl`` from line ``after_line`` on (the mirror's fallback
        when the job's log is gone, e.g. after the cluster restarted)."""
        path = self._run_dir(run_id) / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return {"rows": runs.parse_metrics_lines(lines[after_line:]), "lines": len(lines)}

    # -- dispatch ------------------------------------------------------------------------------
    def call(self, verb: str, kwargs: dict | None):
        """Run one verb with plain-data arguments (upload references resolved) and return its result."""
        if verb in BOX_VERBS:
            method = getattr(self, verb)
        elif verb in ENGINE_VERBS:
            method = getattr(self.engine, verb)
        else:
            raise UserError(f"the TuneLab service has no verb {verb!r}")
        return method(**self.arguments(method, kwargs or {}))

    def stream(self, verb: str, kwargs: dict | None):
        """A streaming verb's answer, as the dicts sent one per line: ``{"piece"}`` for each piece
        of an ``Iterator`` verb; ``{"progress"}`` for each tick then ``{"result"}`` for a verb
        with a ``progress`` callback. The arguments are checked before the first piece is asked for."""
        if verb not in STREAM_VERBS:
            raise UserError(f"the TuneLab service has no streaming verb {verb!r}")
        method = getattr(self.engine, verb)
        kwargs = self.arguments(method, kwargs or {})
        if "progress" in inspect.signature(method).parameters:
            return with_progress(method, kwargs)
        return ({"piece": piece} for piece in method(**kwargs))


def with_progress(work, kwargs: dict):
    """Run ``work(**kwargs, progress=...)`` in a thread; yield ``{"progress": [...]}`` for each tick,
    then ``{"result": ...}`` (an exception of the work is raised here). Closing the generator
    (the client went away) makes the work's next tick raise, so it stops instead of running on."""
    items, gone = queue.Queue(), threading.Event()

    def tick(*done):
        if gone.is_set():
            raise _ClientGone("the client of this answer went away")
        items.put({"progress": list(done)})

    def run():
        try:
            items.put({"result": work(**kwargs, progress=tick)})
        except BaseException as exc:  # handed to the reader, which raises it
            items.put(exc)

    threading.Thread(target=run, name="tunelab-service-stream", daemon=True).start()
    try:
        while True:
            item = items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if "result" in item:
                return
    finally:
        gone.set()


# -- HTTP -------------------------------------------------------------------------------------------
def _json_response(code: int, body) -> Response:
    """JSON as the client reads it: ``default=str`` for paths and the like, NaN allowed (a loss can be NaN)."""
    return Response(json.dumps(body, default=str), status_code=code, media_type="application/json")


def _failure(exc: BaseException) -> tuple[int, dict]:
    """An exception as a status and a body: a UserError is a 400 with its sentence (413 for an
    upload too large), a malformed request a 400, anything else a 500 with a short message."""
    if isinstance(exc, UserError):
        return (413 if isinstance(exc, UploadTooLarge) else 400), {"error": str(exc), "user_error": True}
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return 400, {"error": f"bad request: {type(exc).__name__}: {exc}", "user_error": True}
    traceback.print_exc()  # keep serving; the box's log has the traceback
    return 500, {"error": f"{type(exc).__name__}: {exc}"}


def _answer(work, *args) -> Response:
    """``work(*args)`` as a response (run in the thread pool: the work and the JSON both take time)."""
    try:
        return _json_response(200, {"result": work(*args)})
    except Exception as exc:
        return _json_response(*_failure(exc))


def _kwargs_of(body: bytes):
    """The ``kwargs`` of a request body ``{"kwargs": {...}}`` (no body: none)."""
    request = json.loads(body) if body else {}
    if not isinstance(request, dict):
        raise TypeError(f"the body must be a JSON object, not {type(request).__name__}")
    return request.get("kwargs") or {}


def _ndjson(items):
    """Each item as one JSON line; an error ends the answer with an ``{"error"}`` line."""
    try:
        for item in items:
            yield (json.dumps(item, default=str) + "\n").encode()
    except Exception as exc:
        yield (json.dumps(_failure(exc)[1], default=str) + "\n").encode()
    finally:
        items.close()  # ended early: the work behind the answer stops (see with_progress)


async def _in_threadpool(lines):
    """The sync iterator ``lines`` pulled in Starlette's thread pool (as StreamingResponse does by
    itself), and closed when the answer ends early: the client went away, or a shutdown cut it."""
    try:
        async for line in iterate_in_threadpool(lines):
            yield line
    finally:
        lines.close()  # not running: a cancel is delivered only once the thread's next() returned


async def _info_endpoint(request: Request) -> Response:
    return await run_in_threadpool(_answer, request.app.state.service.info)


async def _call_endpoint(request: Request) -> Response:
    service, body = request.app.state.service, await request.body()
    return await run_in_threadpool(_answer, lambda: service.call(request.path_params["verb"], _kwargs_of(body)))


async def _stream_endpoint(request: Request) -> Response:
    """Checked first (unknown verb 404, bad arguments 400); then 200 and one JSON line per piece,
    each sent as it is made (chunked). The pieces are pulled in the thread pool."""
    service, verb = request.app.state.service, request.path_params["verb"]
    if verb not in STREAM_VERBS:
        return _json_response(404, {"error": f"no streaming verb {verb!r}"})
    body = await request.body()
    try:
        items = await run_in_threadpool(lambda: service.stream(verb, _kwargs_of(body)))
    except Exception as exc:
        return _json_response(*_failure(exc))
    return StreamingResponse(_in_threadpool(_ndjson(items)), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _upload_endpoint(request: Request) -> Response:
    params, length = request.path_params, request.headers.get("content-length")
    try:
        ref = await request.app.state.service.store_upload(params["digest"], params["name"], request.stream(),
                                                           int(length) if length else None)
    except Exception as exc:
        return _json_response(*_failure(exc))
    return _json_response(200, {"result": ref})


async def _no_endpoint(request: Request, exc) -> Response:
    return _json_response(exc.status_code, {"error": f"no such endpoint {request.method} {request.url.path}"})


class TokenCheck:
    """ASGI middleware in front of every route: no ``Authorization`` header 401, a wrong one 403
    (compared in constant time). ``token`` None lets everything in (loopback only, see make_server)."""

    def __init__(self, app, token: str | None):
        self.app, self.expected = app, None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.expected is None:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        if header and hmac.compare_digest(header, self.expected):
            return await self.app(scope, receive, send)
        await _drain(receive)  # a client still sending its body would otherwise see a reset, not the refusal
        code, error = (403, "invalid bearer token") if header else (401, "missing bearer token")
        await _json_response(code, {"error": error})(scope, receive, send)


async def _drain(receive, limit: int = 1 << 20) -> None:
    """Read (and drop) up to ``limit`` bytes of the request's body."""
    seen = 0
    while seen <= limit:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def make_app(service, token: str | None) -> Starlette:
    """The service's ASGI app: the routes of the protocol behind :class:`TokenCheck`."""
    app = Starlette(routes=[Route(f"{API}/info", _info_endpoint, methods=["GET"]),
                            Route(f"{API}/call/{{verb}}", _call_endpoint, methods=["POST"]),
                            Route(f"{API}/stream/{{verb}}", _stream_endpoint, methods=["POST"]),
                            Route(f"{API}/upload/{{digest}}/{{name}}", _upload_endpoint, methods=["PUT"])],
                    middleware=[Middleware(TokenCheck, token=token)],
                    exception_handlers={404: _no_endpoint, 405: _no_endpoint})
    app.state.service = service
    return app


LOG_CONFIG = {  # uvicorn's own, on stderr with the service's prefix; no header (so no token) is logged
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"default": {"()": "uvicorn.logging.DefaultFormatter", "use_colors": False,
                               "fmt": "[tunelab-service] %(levelname)s %(message)s"},
                   "access": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                              "fmt": '[tunelab-service] %(client_addr)s "%(request_line)s" %(status_code)s'}},
    "handlers": {"default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
                 "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
                "uvicorn.error": {"level": "INFO"},
                "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False}},
}


class ServiceServer:
    """uvicorn serving the app on a socket bound at construction (port 0: a free one, read from
    ``server_address``), with the verbs of ``http.server``'s servers: ``serve_forever``,
    ``shutdown`` (graceful: answers under way get :data:`GRACE_S`) and ``server_close``.
    In the main thread, SIGINT and SIGTERM shut it down the same way."""

    def __init__(self, app, sock: socket.socket):
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", ws="none", http="h11", log_config=LOG_CONFIG,
                                                    timeout_graceful_shutdown=GRACE_S))
        self._serving, self._done = threading.Event(), threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop serving and wait until the answers under way have ended (or were cut after GRACE_S)."""
        self.server.should_exit = True
        if self._serving.is_set():
            self._done.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                service: Service | None = None) -> ServiceServer:
    """The service's server, listening but not yet serving. Refuses to listen without a token
    unless the address is loopback and ``TUNELAB_RAY_ALLOW_NO_TOKEN=1``."""
    token = token or service_token()
    if not token and not (is_loopback(host) and os.environ.get("TUNELAB_RAY_ALLOW_NO_TOKEN") == "1"):
        raise UserError("the TuneLab service needs a token: set TUNELAB_RAY_TOKEN (or RAY_AUTH_TOKEN, or run "
                        "`ray get-auth-token --generate`); without one, anyone who reaches the port runs the engine")
    bare = host.strip("[]")
    sock = socket.create_server((bare, port), family=socket.AF_INET6 if ":" in bare else socket.AF_INET)
    try:
        return ServiceServer(make_app(service or Service(), token), sock)
    except BaseException:
        sock.close()
        raise


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted (``python -m tunelab serve``): SIGINT or SIGTERM stop it gracefully."""
    try:
        server = make_server(host, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    print(f"TuneLab service on {server.url} (runs in {runs_root().resolve()}, uploads in {uploads_dir()})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
