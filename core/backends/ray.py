"""The Ray backend, client side: runs are Ray Jobs on a GPU box, the interactive verbs go to the
TuneLab service on the box (``tunelab.core.service``). Every request carries ``Authorization: Bearer <token>``.

This module imports neither ray nor torch: the Streamlit Cloud thin client has neither. It
speaks HTTP with ``urllib`` to two places on the box:

- Ray's Jobs API (``TUNELAB_RAY_ADDRESS``, e.g. ``https://gpu-box:8265``): ``/api/packages/``
  (the client's ``core/`` and ``plugins/`` as the job's working_dir, content-addressed, so the
  box runs the same engine code as the client without a redeploy), ``/api/jobs/`` (submit,
  status, logs, stop);
- the TuneLab service (``TUNELAB_RAY_SERVICE``, default: the same host, port 8266): run
  folders on the box, data uploads, STOP files, and the warm model for generate and evaluate.

A run's folder on the client mirrors the box's: ``config.yaml``, ``status.json`` (with a
``remote`` entry, so :func:`tunelab.core.runs.read_status` does not judge it by a local pid) and every
metrics row, parsed from the job's log with :func:`tunelab.core.runs.parse_metrics_lines`, plus
``backend.json`` (address, box run id, job id). The box's runs folder is the source of truth;
the mirror is brought up to date whenever it is read, so a lost connection costs nothing but
"reconnecting" until the next successful read.

The module is longer than most in core/ because it is one backend end to end (HTTP client,
job building, the facade's verbs, the mirror, the CLI), each part short; splitting it would
spread one protocol over several files.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import shlex
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .. import experiments, runs
from ..config import DataConfig, load_config
from ..data import check_path
from ..engine import Engine, backend_settings
from ..errors import UserError
from ..paths import ENGINE_ROOT, PACKAGE_DIR
from ..plan import check_resources

TERMINAL_JOB = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_GRACE_S = float(os.environ.get("TUNELAB_RAY_STOP_GRACE_S") or 60)
SYNC_EVERY_S = 1.0  # a page polling several times a second must not fetch the log each time
DEFAULT_PORT = 8266  # the TuneLab service's port beside Ray's (core.service listens on it by default)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (the only hosts reached without a token, when asked)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BackendUnreachable(UserError):
    """The address did not answer (down, wrong host or port, a network in between)."""


class Refused(UserError):
    """The address answered with an HTTP error; ``code`` is its status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect would carry the token to another host
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class Http:
    """Requests to one base URL with the bearer token, errors turned into one-line UserErrors."""

    def __init__(self, base: str, token: str | None, what: str, timeout: float = 30):
        self.base, self.token, self.what, self.timeout = base.rstrip("/"), token, what, timeout
        parsed = urllib.parse.urlparse(self.base)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UserError(f"{what} address {base!r} is not a URL; expected e.g. http://gpu-box:8265")
        self.host = parsed.hostname

    def _headers(self, extra: dict | None) -> dict:
        if not self.token:
            if not (is_loopback(self.host) and os.environ.get("TUNELAB_RAY_ALLOW_NO_TOKEN") == "1"):
                raise UserError(f"no token for the backend at {self.base}: set TUNELAB_RAY_TOKEN (on Streamlit Cloud, "
                                "token in the [backend] secrets); TuneLab sends no request without one")
            return dict(extra or {})
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def open(self, method: str, path: str, body=None, data: bytes | None = None, headers=None, timeout=None):
        """The raw response (for streams); ``body`` is sent as JSON."""
        headers = self._headers(headers)
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            return _opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc, method, path) from None
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnreachable(f"cannot reach {self.what} at {self.base} ({reason}); check the address "
                                     "(TUNELAB_RAY_ADDRESS / TUNELAB_RAY_SERVICE) and that it is running") from None

    def json(self, method: str, path: str, body=None, data=None, headers=None, timeout=None):
        with self.open(method, path, body, data, headers, timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise UserError(f"{self.what} at {self.base} answered {path} with something that is not JSON") from None

    def _refusal(self, exc: urllib.error.HTTPError, method: str, path: str) -> UserError:
        text = exc.read().decode(errors="replace")[:500]
        if exc.code in (401, 403):
            why = "no token was sent" if exc.code == 401 else "the token is wrong"
            return Refused(f"the backend at {self.base} refused the token ({why}): set TUNELAB_RAY_TOKEN to the "
                             "cluster's token (`ray get-auth-token` on the box prints it)", exc.code)
        try:
            message = json.loads(text).get("error")
        except (ValueError, AttributeError):
            message = None
        if exc.code == 400 and message:
            return Refused(message, 400)
        if exc.code == 404 and not message:
            return Refused(f"{self.what} at {self.base} has no {path} ({text.strip()[:200]})", 404)
        last = (message or text).strip().splitlines()[-1:] or [""]
        return Refused(f"{self.what} at {self.base} failed on {method} {path} ({exc.code}): {last[0]}", exc.code)


# -- what a job runs ----------------------------------------------------------------------------
def worker_command(python: str, run_dir: str, resume: bool = False) -> list[str]:
    """TuneLab's worker command, unchanged from a local run (a ``workers: N`` run starts its group itself,
    on this cluster, through Ray Train: ``tunelab.core.scale``)."""
    verb = ["resume", run_dir] if resume else ["train", f"{run_dir}/config.yaml", "--run-dir", run_dir]
    return [python, "-m", "tunelab", *verb]


def job_request(python: str, run_dir: str, job_id: str, package: str, runs_dir: str, run_id: str,
                resume: bool = False, gpus: int = 0, workers: int = 1) -> dict:
    """The body of ``POST /api/jobs/`` for one attempt of a run.

    A one-process run is the job itself, on a CPU or (``gpus``) a GPU. A group's job is only its driver,
    which asks Ray Train for a CPU or GPU per rank: it reserves nothing, or the ranks could never all fit.
    """
    body = {"entrypoint": shlex.join(worker_command(python, run_dir, resume)), "submission_id": job_id,
            "runtime_env": {"working_dir": package,
                            "env_vars": {"PYTHONUNBUFFERED": "1", "TUNELAB_RUNS_DIR": runs_dir}},
            "metadata": {"tunelab_run": run_id}, "entrypoint_num_cpus": 1 if workers == 1 else 0}
    if gpus and workers == 1:
        body["entrypoint_num_gpus"] = 1
    return body


def job_id_for(run_id: str, attempt: int) -> str:
    """The Ray submission id of a run's ``attempt``-th job (1 = the first train, then each resume)."""
    return f"tunelab-{run_id}-{attempt}"


def code_package() -> tuple[str, bytes]:
    """The engine as a zip with fixed timestamps (the same code, the same package name), laid out as a
    checkout: ``tunelab/`` (its two small files), ``core/`` and ``plugins/``. Ray unpacks it as the job's
    working folder, where ``python -m tunelab`` imports it; a checkout and an installed wheel ship the same zip."""
    trees = [("tunelab", PACKAGE_DIR, [PACKAGE_DIR / "__init__.py", PACKAGE_DIR / "__main__.py"]),
             ("core", ENGINE_ROOT / "core", None), ("plugins", ENGINE_ROOT / "plugins", None)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for folder, top, files in trees:
            for path in files or sorted(top.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    info = zipfile.ZipInfo(f"{folder}/{path.relative_to(top).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
                    z.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return f"_ray_pkg_{hashlib.sha256(data).hexdigest()[:32]}.zip", data


def service_address(address: str) -> str:
    """The TuneLab service beside a Ray address: the same scheme and host, port 8266."""
    parsed = urllib.parse.urlparse(address)
    host = parsed.hostname or "127.0.0.1"
    return f"{parsed.scheme or 'http'}://{'[' + host + ']' if ':' in host else host}:{DEFAULT_PORT}"


class RayEngine(Engine):
    """The facade's verbs on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, settings: dict):
        self.settings = dict(settings)
        address = (self.settings.get("address") or "").strip()
        if not address:
            raise UserError("the ray backend needs an address: set TUNELAB_RAY_ADDRESS (e.g. http://gpu-box:8265), "
                            "or address in the [backend] secrets")
        token = (self.settings.get("token") or "").strip() or None
        self.address = address.rstrip("/")
        self.service_url = (self.settings.get("service") or service_address(self.address)).rstrip("/")
        self.jobs = Http(self.address, token, "the Ray jobs API")
        self.service = Http(self.service_url, token, "the TuneLab service", timeout=600)
        self.gpus = int(self.settings.get("gpus") or 0)
        self._box = None
        self._uploads: dict = {}
        self._synced: dict = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------
    def call(self, verb: str, **kwargs):
        """One verb on the service; its UserErrors come back as UserErrors."""
        return self.service.json("POST", f"/v1/call/{verb}", {"kwargs": kwargs})["result"]

    def stream(self, verb: str, **kwargs):
        """A streaming verb: yields the service's JSON lines; an error line becomes a UserError."""
        response = self.service.open("POST", f"/v1/stream/{verb}", {"kwargs": kwargs})
        with response:
            for line in response:
                item = json.loads(line)
                if "error" in item:
                    raise UserError(item["error"])
                yield item

    def box(self) -> dict:
        """The service's ``info`` (runs folder, Python), fetched once."""
        if self._box is None:
            self._box = self.service.json("GET", "/v1/info")["result"]
        return self._box

    def upload(self, path) -> str:
        """A local file on the box (``upload:<sha>/<name>``); a path that is not a file here is passed on."""
        local = Path(path)
        if not local.is_file():
            return str(path)
        stat = local.stat()
        key = (str(local.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._uploads:
            limit = self.box().get("max_upload_bytes")  # checked here: a refusal mid-send reads as a reset
            if limit is not None and stat.st_size > limit:
                raise UserError(f"{local.name} is {stat.st_size / 2**20:.1f} MB; the box at {self.service_url} "
                                f"takes uploads up to {limit / 2**20:g} MB (TUNELAB_MAX_UPLOAD_MB on the box)")
            data = local.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            name = "".join(c if c.isalnum() or c in "._-" else "_" for c in local.name)[:200] or "data"
            self._uploads[key] = self.service.json("PUT", f"/v1/upload/{digest}/{name}", data=data,
                                                   headers={"Content-Type": "application/octet-stream"})["result"]
        return self._uploads[key]

    def package(self) -> str:
        """Upload the engine code once (Ray keeps packages by name) and return its ``gcs://`` URI."""
        name, data = code_package()
        try:
            self.jobs.open("GET", f"/api/packages/gcs/{name}").close()
        except Refused as exc:
            if exc.code != 404:
                raise
            self.jobs.open("PUT", f"/api/packages/gcs/{name}", data=data,
                           headers={"Content-Type": "application/octet-stream"}).close()
        return f"gcs://{name}"

    # -- where the work runs ----------------------------------------------------------------------
    def health(self) -> dict:
        where = f"Ray at {self.address}"
        try:
            version = self.jobs.json("GET", "/api/version")
            self._box = None  # ask again: the service may have gone away since
            info = self.box()
        except UserError as exc:
            return {"ok": False, "backend": self.name, "where": where, "detail": str(exc)}
        return {"ok": bool(info["health"].get("ok")), "backend": self.name, "where": where,
                "detail": f"Ray {version.get('ray_version')}; box: {info['health'].get('detail')}; "
                          f"runs in {info['runs_dir']}"}

    def capabilities(self) -> dict:
        return {**self.call("capabilities"), "install_plugins": False}

    def plugins(self): return self.call("plugins")
    def data_formats(self): return self.call("data_formats")
    def samplers(self): return self.call("samplers")
    def evaluators(self): return self.call("evaluators")
    def describe_model(self, model): return self.call("describe_model", model=model)
    def tokenize(self, model, text): return self.call("tokenize", model=model, text=text)
    def machine(self): return self.call("machine")
    def estimate_memory(self, config): return self.call("estimate_memory", config=_engine_config(config)[0])

    def render_chat(self, model, messages, add_generation_prompt=False):
        return self.call("render_chat", model=model, messages=messages, add_generation_prompt=add_generation_prompt)

    def detect_format(self, path):
        return self.call("detect_format", path=self.upload(path))

    def check_data(self, path, format=None, params=None, model="embedded", max_length=512):
        return self.call("check_data", path=self.upload(path), format=format, params=params, model=model,
                         max_length=max_length)

    def load_records(self, path, format=None, params=None, limit=None):
        return self.call("load_records", path=self.upload(path), format=format, params=params, limit=limit)

    def encode_example(self, model, record, max_length, train_on_prompt=False):
        return self.call("encode_example", model=model, record=record, max_length=max_length,
                         train_on_prompt=train_on_prompt)

    def measure_memory(self, config):
        raise UserError("measuring a step is not offered through the ray backend; on the box run "
                        "`python -m tunelab memory` or the Memory page of a dashboard there")

    def export_run(self, run_id, out_dir, type="f16", sampler=None, progress=None, keep_anyway=False):
        raise UserError(f"export run {run_id} on the box, where its model is (`python -m tunelab` there)")

    def training_speed(self, config, measured=None):
        return self.call("training_speed", config=_engine_config(config)[0], measured=measured)

    def table_columns(self, path):
        return self.call("table_columns", path=self.upload(path))

    def delete_run(self, run_id, owner=None):
        raise UserError(f"deleting runs is not offered through the ray backend: the box's runs folder is the source "
                        f"of truth. Delete run {run_id} on the box (`python -m tunelab delete RUN_DIR` there); this "
                        f"dashboard's mirror of it goes with `rm -r {self.mirror_dir(run_id)}`")

    # -- generate and evaluate (the model stays on the box) -----------------------------------------
    def next_token_distribution(self, model, prompt, sampler="greedy", params=None, top=15):
        return self.call("next_token_distribution", model=model, prompt=prompt, sampler=sampler, params=params,
                         top=top)

    def generate(self, model, prompt, sampler="greedy", params=None, max_new_tokens=128, seed=0):
        for item in self.stream("generate", model=model, prompt=prompt, sampler=sampler, params=params,
                                max_new_tokens=max_new_tokens, seed=seed):
            yield item["piece"]

    def evaluate(self, run_id, data_path=None, evaluators=None, limit=None, max_new_tokens=96,
                 evaluator_params=None, progress=None):
        box_id = self._box_id(run_id)
        for item in self.stream("evaluate", run_id=box_id, data_path=self.upload(data_path) if data_path else None,
                                evaluators=evaluators, limit=limit, max_new_tokens=max_new_tokens,
                                evaluator_params=evaluator_params):
            if "progress" in item and progress:
                progress(*item["progress"])
            if "result" in item:
                return item["result"]
        raise UserError(f"the TuneLab service at {self.service_url} closed the evaluation of {run_id} early")

    def eval_report(self, run_id):
        return self.call("eval_report", run_id=self._box_id(run_id))

    # -- runs: Ray Jobs on the box, mirrored here -------------------------------------------------
    def mirror_dir(self, run_id: str) -> Path:
        """This machine's mirror of a run started from the dashboard or without ``--run-dir``."""
        return runs.runs_root() / run_id

    def _box_id(self, run_id: str) -> str:
        meta = read_backend(self.mirror_dir(run_id))
        return meta["run_id"] if meta else run_id

    def start_run(self, config: dict, name=None, owner=None, run_dir=None) -> str:
        """Prepare the run on the box (data uploaded into it), submit its job, start the mirror.
        ``run_dir`` is the mirror folder (the CLI's ``--run-dir``); default ``runs_root()/<run id>``."""
        config, gpus = _engine_config(config, self.gpus)
        workers = int(config.get("workers") or 1)
        self.check_group(workers)  # more ranks than the cluster holds would wait forever: refused now
        data = config.setdefault("data", {})
        data["path"] = self.upload(data.get("path") or DataConfig().path)  # a file here travels to the box
        info = self.box()
        prepared = self.call("prepare_run", config=config, name=name or (Path(run_dir).name if run_dir else None))
        box_id, mirror = prepared["run_id"], Path(run_dir) if run_dir else self.mirror_dir(prepared["run_id"])
        mirror.mkdir(parents=True, exist_ok=True)
        job = job_id_for(box_id, 1)
        write_backend(mirror, {"backend": "ray", "address": self.address, "service": self.service_url,
                               "run_id": box_id, "box_run_dir": prepared["run_dir"], "job": job, "attempt": 1,
                               "from_step": 0, "gpus": gpus, "workers": workers})
        _write_mirror_config(mirror, prepared["config"])
        runs.write_atomic(mirror / "status.json", json.dumps(
            {"state": "queued", "step": 0, "total_steps": None, "error": None, "pid": None,
             "remote": {"address": self.address, "job": job}, "updated_at": runs.now()}, indent=2))
        runs.truncate_metrics(mirror, -1)
        self._submit(prepared["run_dir"], job, box_id, info, resume=False, gpus=gpus, workers=workers)
        return mirror.name

    def _submit(self, box_run_dir, job, box_id, info, resume, gpus, workers=1) -> None:
        body = job_request(info["python"], box_run_dir, job, self.package(), info["runs_dir"], box_id, resume, gpus,
                           workers)
        self.jobs.json("POST", "/api/jobs/", body)

    def cluster_resources(self) -> dict | None:
        """``{"CPU": n, "GPU": m}`` summed over the cluster's live nodes (the dashboard's state API), or
        None when it cannot tell (a head that has just started lists no node yet)."""
        try:
            nodes = self.jobs.json("GET", "/api/v0/nodes?limit=1000")["data"]["result"]["result"]
        except (UserError, KeyError, TypeError):
            return None
        alive = [n.get("resources_total") or {} for n in nodes if n.get("state") == "ALIVE"]
        if not alive:
            return None
        return {key: sum(float(n.get(key, 0)) for n in alive) for key in ("CPU", "GPU")}

    def check_group(self, workers: int) -> None:
        """Refuse a ``workers: N`` run the cluster cannot hold, before a job is submitted."""
        if workers > 1:
            found = self.cluster_resources()
            if found is not None:
                check_resources(workers, found["GPU"], found["CPU"])

    def resume_run(self, run_id, owner=None, run_dir=None) -> None:
        """A new job (``python -m tunelab resume``) for the same box folder; rows stay contiguous."""
        mirror = Path(run_dir) if run_dir else self.mirror_dir(run_id)
        meta = self._meta(mirror, run_id)
        self.sync(mirror, force=True)
        status = runs.read_status(mirror)
        if status["state"] in runs.ACTIVE:
            raise UserError(f"run {run_id} is still {status['state']} on the box (job {meta['job']})")
        self.check_group(int(meta.get("workers") or 1))
        prepared = self.call("prepare_resume", run_id=meta["run_id"])
        attempt = int(prepared["attempt"])
        meta.update(job=job_id_for(meta["run_id"], attempt), attempt=attempt, from_step=prepared["checkpoint_step"])
        write_backend(mirror, meta)
        runs.write_status(mirror, state="queued", error=None, remote={"address": self.address, "job": meta["job"]})
        self._submit(prepared["run_dir"], meta["job"], meta["run_id"], self.box(), resume=True,
                     gpus=int(meta.get("gpus") or 0), workers=int(meta.get("workers") or 1))

    def stop_run(self, run_id, owner=None, run_dir=None, wait: bool = False) -> None:
        """The box's STOP file first (the worker checkpoints and exits); Ray's job stop after
        ``TUNELAB_RAY_STOP_GRACE_S`` seconds if the job is still there (in a thread unless ``wait``)."""
        mirror = Path(run_dir) if run_dir else self.mirror_dir(run_id)
        meta = self._meta(mirror, run_id)
        job = self.jobs.json("GET", f"/api/jobs/{meta['job']}")
        if job["status"] == "PENDING":  # no worker yet to read a STOP file (and it would clear it)
            self.jobs.json("POST", f"/api/jobs/{meta['job']}/stop")
        elif job["status"] not in TERMINAL_JOB:
            self.call("request_stop", run_id=meta["run_id"])
        else:
            raise UserError(f"run {run_id} is not running (its job {meta['job']} is {job['status'].lower()})")
        runs.write_status(mirror, state="stopping")
        if wait:
            self._stop_fallback(meta["job"])
        else:
            threading.Thread(target=self._stop_fallback, args=(meta["job"],), daemon=True).start()

    def _stop_fallback(self, job: str) -> None:
        deadline = time.time() + STOP_GRACE_S
        try:
            while time.time() < deadline:
                if self.jobs.json("GET", f"/api/jobs/{job}")["status"] in TERMINAL_JOB:
                    return
                time.sleep(1)
            self.jobs.json("POST", f"/api/jobs/{job}/stop")
        except UserError:
            pass  # the box went away; the next sync says so

    def list_runs(self) -> list[dict]:
        """The box's runs (the source of truth); ``run_dir`` is this machine's mirror of each."""
        found = self.call("list_runs")
        for status in found:
            status["box_run_dir"], status["run_dir"] = status.get("run_dir"), str(self.mirror_dir(status["run_id"]))
        return found

    def find_run(self, run_id):
        if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
            return None
        return run_id if read_backend(self.mirror_dir(run_id)) else self.call("find_run", run_id=run_id)

    def run_progress(self, run_id) -> dict:
        mirror = self._ensure_mirror(run_id)
        self.sync(mirror)
        return runs.progress(mirror)

    def run_metrics(self, run_id) -> list[dict]:
        mirror = self._ensure_mirror(run_id)
        self.sync(mirror)
        return runs.read_metrics(mirror)

    def run_config(self, run_id) -> dict:
        return self.call("run_config", run_id=self._box_id(run_id))

    def run_log(self, run_id, lines=40) -> str:
        meta = self._meta(self._ensure_mirror(run_id), run_id)
        logs = self.jobs.json("GET", f"/api/jobs/{meta['job']}/logs")["logs"]
        return "\n".join(logs.splitlines()[-lines:])

    # -- experiments: every run a Ray job, submitted together; the record in this machine's mirror -------
    def start_experiment(self, plan, setting, values, budget_s=120, owner=None) -> str:
        """Plan as the local backend does (the box's data check and speed), then submit every run at once:
        the box's Ray schedules them side by side as its CPUs and GPUs allow, so they end no later than
        one after another would (the budget's assumption)."""
        planned = self.plan_experiment(plan, setting, values, budget_s)
        planned["notes"].append("On the Ray backend the runs are submitted together and the box runs them side "
                                "by side as it has room: they may end sooner than planned.")
        folder = experiments.create_experiment(None, planned, owner)
        try:
            for item in experiments.run_configs(planned):
                run_id = self.start_run(item["config"].to_dict(), name=item["name"], owner=owner)
                experiments.mark_started(folder, item["label"], run_id)
        except UserError:  # all or nothing: what was submitted stops, the error says why
            self._stop_experiment_runs(folder)
            raise
        return folder.name

    def experiment(self, exp_id) -> dict:
        folder = experiments.experiment_folder(exp_id)
        for run_id in experiments.run_ids(folder):
            self._catch_up(run_id)
        return experiments.read_experiment(folder)

    def list_experiments(self) -> list[dict]:
        return [self.experiment(record["id"]) for record in experiments.list_experiments()]

    def stop_experiment(self, exp_id, owner=None) -> None:
        folder = experiments.experiment_folder(exp_id)
        experiments.check_owner(folder, owner, "stop")
        for run_id in experiments.run_ids(folder):
            self._catch_up(run_id)
        self._stop_experiment_runs(folder)

    def _stop_experiment_runs(self, folder) -> None:
        for run_id in experiments.mark_stopped(folder):
            try:
                self.stop_run(run_id)
            except UserError:
                pass  # it ended meanwhile, or the box is away (the job runs on: stop it there)

    def _catch_up(self, run_id: str) -> None:
        """Sync the mirror of a run still active (an ended run's mirror is final); rebuilt if it was lost."""
        try:
            mirror = self._ensure_mirror(run_id)
            if runs.read_status(mirror)["state"] in runs.ACTIVE:
                self.sync(mirror)
        except UserError:
            pass  # the box is away: the record shows what the mirror has

    def _meta(self, mirror: Path, run_id) -> dict:
        meta = read_backend(mirror)
        if not meta:
            raise UserError(f"{mirror} is not a run of the ray backend (no backend.json): it runs on this machine, "
                            "or was never started; unset TUNELAB_BACKEND to act on a local run")
        return meta

    def _ensure_mirror(self, run_id: str) -> Path:
        """The mirror folder, made from the box's records for a run started elsewhere (another tab,
        a redeployed app whose runs folder was wiped)."""
        mirror = self.mirror_dir(run_id)
        if read_backend(mirror):
            return mirror
        status = self.call("run_status", run_id=run_id)
        attempt = int(status.get("job_attempt") or 1)
        mirror.mkdir(parents=True, exist_ok=True)
        _write_mirror_config(mirror, self.call("run_config", run_id=run_id))
        write_backend(mirror, {"backend": "ray", "address": self.address, "service": self.service_url,
                               "run_id": run_id, "job": job_id_for(run_id, attempt), "attempt": attempt,
                               "from_step": int(status.get("job_from_step") or 0), "rebuilt": True})
        runs.write_atomic(mirror / "status.json", json.dumps({**status, "pid": None, "remote": {}}))
        rows = self.call("run_metrics", run_id=run_id)["rows"]
        runs.write_atomic(mirror / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return mirror

    def sync(self, mirror, force: bool = False) -> dict:
        """Bring the mirror up to date with the box: status and every new metrics row. Returns the status.

        Unreachable: the run goes on on the box; the mirror keeps what it has and says
        ``reconnecting`` until a later sync catches up the rows it missed.
        """
        mirror = Path(mirror)
        with self._lock:
            if not force and time.time() - self._synced.get(str(mirror), 0) < SYNC_EVERY_S:
                return runs.read_status(mirror)
            self._synced[str(mirror)] = time.time()
        return sync_mirror(self, mirror, self._meta(mirror, mirror.name))


# -- the mirror ---------------------------------------------------------------------------------
def sync_mirror(engine: RayEngine, mirror: Path, meta: dict) -> dict:
    """One catch-up of ``mirror`` from the box (see :meth:`RayEngine.sync`)."""
    try:
        box = engine.call("run_status", run_id=meta["run_id"])
        job = job_info(engine, meta["job"])
        rows = _rows(engine, mirror, meta, job)
    except BackendUnreachable:
        runs.write_status(mirror, reconnecting=True)
        return runs.read_status(mirror)
    runs.write_atomic(mirror / "status.json", json.dumps(_combine(box, job, meta, engine.address), indent=2))
    if rows != runs.read_metrics(mirror):
        runs.write_atomic(mirror / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return runs.read_status(mirror)


def job_info(engine: RayEngine, job: str) -> dict | None:
    """The job's record in Ray (None when the cluster no longer knows it, e.g. after a restart)."""
    try:
        return engine.jobs.json("GET", f"/api/jobs/{job}")
    except Refused as exc:
        if exc.code == 404:
            return None
        raise


def _rows(engine: RayEngine, mirror: Path, meta: dict, job: dict | None) -> list[dict]:
    """Rows up to the attempt's start (kept from earlier attempts), then the current job's log.

    Resume truncates the box's metrics past its checkpoint; keeping ``step <= from_step``
    here does the same, so the steps stay contiguous. A mirror without that history (rebuilt
    for a run started elsewhere) or a job Ray forgot reads the box's metrics file instead.
    """
    from_step = int(meta.get("from_step") or 0)
    kept = [r for r in runs.read_metrics(mirror) if r["step"] <= from_step]
    if job is None or (from_step and not kept):
        return engine.call("run_metrics", run_id=meta["run_id"])["rows"]
    logs = engine.jobs.json("GET", f"/api/jobs/{meta['job']}/logs")["logs"]
    return kept + runs.parse_metrics_lines(logs.splitlines())


def _combine(box: dict, job: dict | None, meta: dict, address: str) -> dict:
    """The box's status, corrected by what Ray knows of the job (the worker cannot report a
    job that never started or was killed before it wrote its state)."""
    status = {**box, "pid": None, "reconnecting": False,
              "remote": {"address": address, "job": meta["job"], "job_status": job["status"] if job else "gone",
                         "job_message": (job or {}).get("message")}}
    if job is None:
        return status
    never_started = box.get("interrupted") and not box.get("pid")
    if job["status"] in ("PENDING", "RUNNING") and never_started:
        status.update(state="queued", error=None, interrupted=False)  # waiting for resources, or loading
    elif job["status"] in ("FAILED", "STOPPED") and (box.get("state") in runs.ACTIVE or never_started):
        status.update(state="failed", error=f"the job {meta['job']} {job['status'].lower()}: {job.get('message')}")
    return status


def _engine_config(config: dict, default_gpus: int = 0) -> tuple[dict, int]:
    """The RunConfig part of a config dict, and whether a one-process run asks for a GPU (``gpus``, a
    backend setting, not a RunConfig key). ``gpus: N`` above 1 means N workers, one per GPU."""
    config = json.loads(json.dumps(config or {}))
    gpus = int(config.pop("gpus", None) or default_gpus or 0)
    if gpus < 0:
        raise UserError(f"gpus: {gpus} is negative; ask for 0 (CPU), 1, or the number of GPUs to train on")
    if gpus > 1 and int(config.get("workers") or 1) == 1:
        config["workers"] = gpus
    return config, gpus


def _write_mirror_config(mirror: Path, config: dict) -> None:
    import yaml

    runs.write_atomic(mirror / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def read_backend(run_dir) -> dict | None:
    """``backend.json`` of a mirrored run (None for a local run)."""
    try:
        return json.loads((Path(run_dir) / "backend.json").read_text())
    except (OSError, ValueError):
        return None


def write_backend(run_dir, meta: dict) -> None:
    """Write ``backend.json`` (atomically)."""
    runs.write_atomic(Path(run_dir) / "backend.json", json.dumps(meta, indent=2))


def create(settings: dict) -> RayEngine:
    """The backend plugin's ``create``: ``address``, ``token``, optional ``service`` and ``gpus``
    (also from ``TUNELAB_RAY_SERVICE`` and ``TUNELAB_RAY_GPUS``)."""
    settings = dict(settings)
    for key, env in (("service", "TUNELAB_RAY_SERVICE"), ("gpus", "TUNELAB_RAY_GPUS")):
        if os.environ.get(env):
            settings[key] = os.environ[env]
    return RayEngine(settings)


# -- the CLI through the backend (python -m tunelab train/resume/stop/status with TUNELAB_BACKEND=ray) --
def cli_engine() -> RayEngine:
    """The engine the CLI uses: settings from the environment."""
    return create(backend_settings())


def cli_train(args) -> int:
    """``train CONFIG [--run-dir DIR]`` as a Ray job: streams the rows, returns the run's exit state."""
    cfg = load_config(args.config, args.set)
    try:  # a missing data file is refused here, before anything is uploaded
        check_path(cfg.data.path)
    except UserError as exc:
        raise UserError(f"{args.config}: data.path: {exc}") from None
    engine = cli_engine()
    run_dir = Path(args.run_dir) if args.run_dir else None
    run_id = engine.start_run(cfg.to_dict(), name=Path(args.config).stem, run_dir=run_dir)
    mirror = run_dir or engine.mirror_dir(run_id)
    meta = read_backend(mirror)
    print(f"[tunelab] job {meta['job']} on Ray at {engine.address}; the box keeps the run in "
          f"{meta['box_run_dir']}, mirrored into {mirror}", file=sys.stderr, flush=True)
    return follow(engine, mirror)


def cli_resume(args) -> int:
    """``resume DIR`` of a mirrored run: a new job from the box's checkpoint, followed in the foreground."""
    engine = cli_engine()
    engine.resume_run(Path(args.run_dir).name, run_dir=args.run_dir)
    print(f"[tunelab] resumed as job {read_backend(args.run_dir)['job']}", file=sys.stderr, flush=True)
    return follow(engine, Path(args.run_dir), skip_existing=True)


def cli_stop(args) -> int:
    """``stop DIR`` of a mirrored run: waits for the checkpoint (or Ray's job stop after the grace time)."""
    engine = cli_engine()
    print(f"asking run {Path(args.run_dir).name} to stop; it saves a checkpoint first (Ray stops the job "
          f"if it has not ended within {STOP_GRACE_S:.0f} s)", flush=True)
    engine.stop_run(Path(args.run_dir).name, run_dir=args.run_dir, wait=True)
    status = engine.sync(args.run_dir, force=True)
    print(f"run {Path(args.run_dir).name}: {status['state']} at step {status.get('step', 0)}")
    return 0


def cli_sync(run_dir) -> None:
    """``status DIR`` of a mirrored run: catch up first, then the local printing applies."""
    status = cli_engine().sync(run_dir, force=True)
    if status.get("reconnecting"):
        print(f"  (the backend does not answer: showing the last mirrored state)", file=sys.stderr)


def follow(engine: RayEngine, mirror: Path, skip_existing: bool = False, every: float = 1.0) -> int:
    """Print the run's new rows as JSON lines until it ends. Ctrl-C asks the run to stop (it
    checkpoints); a second Ctrl-C leaves it running on the box. Exit 0 finished or stopped,
    2 when the box refused the input, 1 for any other failure."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the local worker's handlers do not apply here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    printed, stopping = len(runs.read_metrics(mirror)) if skip_existing else 0, False
    while True:
        try:
            status = engine.sync(mirror, force=True)
            rows = runs.read_metrics(mirror)
            printed = min(printed, len(rows))  # a resume dropped rows past its checkpoint
            for row in rows[printed:]:
                print(json.dumps(row), flush=True)
            printed = len(rows)
            job = status.get("remote", {}).get("job_status")
            if status["state"] not in runs.ACTIVE and job in (*TERMINAL_JOB, "gone", None):
                break
            time.sleep(every)
        except KeyboardInterrupt:
            if stopping:
                print(f"\n[tunelab] left running on the box; `python -m tunelab status {mirror}` follows it",
                      file=sys.stderr)
                return 130
            stopping = True
            print("\n[tunelab] stopping after this step (Ctrl-C again to leave it running)", file=sys.stderr)
            engine.stop_run(mirror.name, run_dir=mirror)
    print(f"[tunelab] run {mirror}: {status['state']} at step {status.get('step', 0)}"
          + (f" - {status['error']}" if status.get("error") else ""), file=sys.stderr)
    if status["state"] != "failed":
        return 0
    return 2 if "exit code 2" in str(status.get("remote", {}).get("job_message")) else 1


def cli_status(args) -> int:
    """``status DIR [--json]`` of a mirrored run: catch up with the box, then print as for a local run."""
    cli_sync(args.run_dir)
    return args.func(args)
