"""``python -m tunelab``: the headless face of the engine (GPU backends, CI, scripting).

Exit 0 on success; exit 2 with one clear line on stderr for bad input (what,
where, how to fix it); never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import shutil
import socket
import sys
import time
from pathlib import Path

from . import (data, evaluate, experiment_driver, export, generate, machine, memory, models, queue, runs, scale,
               train, workers)
from .backends import ray
from .config import eval_samples_problem, load_config
from .engine import backend_settings, get_engine
from .errors import UserError
from .measure import measure_step, settings_config
from .registry import get_registry
from .service import serve


def _params(items) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"--param {item}: expected name=value, e.g. --param temperature=0.7")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_plugins(args) -> int:
    listing = get_registry().listing()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"{'plugin':<22} {'source':<11} {'version':<9} {'status':<9} contributes")
    for p in listing:
        contrib = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["contributes"].items() if v) or "-"
        print(f"{p['name']:<22} {p['source']:<11} {str(p['version'] or '-'):<9} {p['status']:<9} {contrib}")
        for line in ([p["error"]] if p["error"] else []) + p["clashes"] + p.get("failures", []):
            print(f"{'':<22} ! {line}")
    return 0


def cmd_data_check(args) -> int:

    registry = get_registry()
    fmt = args.format
    if fmt:
        registry.get("data_formats", fmt)  # unknown format: clear error before any work
    data.check_path(args.file)
    # the file is parsed first and the tokenizer loaded only for a good file: a refusal takes well under a second
    load = None if args.no_tokens else (lambda: models.load_tokenizer(args.model))
    report = data.check_file(args.file, fmt, _params(args.param), None, args.max_length, registry,
                             load_tokenizer=load, model_name=args.model)
    if not report["ok"]:
        if args.json:
            print(json.dumps(report, indent=2))
        raise UserError(report["error"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['file']}: {report['records']} records, format '{report['format']}'")
    print(f"  kinds: {', '.join(f'{k} {v}' for k, v in report['kinds'].items())}")
    dropped = report["dropped"]
    print(f"  kept: {report['kept']}, dropped: {len(dropped)}"
          + (f" (rows {_rows([d['row'] for d in dropped])}: {dropped[0]['reason']})" if dropped else ""))
    print(f"  empty examples: {len(report['empty'])}" + (f" (rows {_rows(report['empty'])})" if report["empty"] else ""))
    dups = report["duplicates"]
    print(f"  duplicates: {len(dups)}" + (f" (rows {_rows([d['row'] for d in dups])})" if dups else ""))
    t = report["token_lengths"]
    if t:
        sample = f" (estimated from {t['sampled']:,} records spread through the file)" if t.get("sampled") else ""
        print(f"  tokens: min {t['min']}, median {t['median']:g}, p95 {t['p95']}, max {t['max']}, total {t['total']}"
              + sample)
        print(f"  longer than max_length={report['max_length']}: {report['over_max_length']}")
    warnings = report["warnings"]
    for message in dict.fromkeys(w["message"] for w in warnings):  # each kind once, with its rows
        rows = [w["row"] for w in warnings if w["message"] == message]
        print(f"  warning: {message} (rows {_rows(rows)})")
    return 0


def _rows(rows, limit=10) -> str:
    text = ", ".join(map(str, rows[:limit]))
    return text + (f", ... {len(rows) - limit} more" if len(rows) > limit else "")


def _echo_progress(total_steps_ref):
    """Print metrics as JSON lines on stdout; a progress bar on stderr when it is a terminal."""
    bar = None

    def echo(row):
        nonlocal bar
        try:
            print(json.dumps(row), flush=True)
        except BrokenPipeError:  # stdout piped into `head` and closed: training goes on
            sys.stdout = open(os.devnull, "w")
        if sys.stderr.isatty() and "loss" in row:
            from tqdm import tqdm

            if bar is None:
                bar = tqdm(total=total_steps_ref(), initial=row["step"] - 1, unit="step", file=sys.stderr)
            bar.update(row["step"] - bar.n)
            bar.set_postfix(loss=row["loss"])
    return echo


def _run_training(cfg, run_dir: Path, resume: bool, launched: bool = False) -> int:
    """Train as the run's worker (the caller holds its ``worker.lock``): wait for a slot, train, report."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the log shows metrics, not weight-loading bars

    def total():
        return runs.read_status(run_dir).get("total_steps")

    if not launched:
        # not started by workers.launch (which clears it): a STOP file is left over from a killed run
        (run_dir / "STOP").unlink(missing_ok=True)
    if not scale.on_ray_cluster():  # a Ray cluster places a group's ranks itself
        # a fixed TUNELAB_MAX_WORKERS (refused here if malformed) needs no memory estimate
        need = None if queue.configured_max() else queue.run_need(cfg)
        if queue.wait_for_slot(run_dir, need, train.StopFlag(run_dir)) is None:
            (run_dir / "STOP").unlink(missing_ok=True)
            runs.write_status(run_dir, state="stopped", waiting_for=None, finished_at=runs.now())
            print(f"[tunelab] run {run_dir}: stopped while queued", file=sys.stderr)
            return 0
    try:
        if cfg.workers > 1:  # a data-parallel group on Ray Train, rank 0 writing the run's files
            result = scale.train_group(cfg, run_dir, resume=resume, echo=_echo_progress(total))
        else:
            result = train.train(cfg, run_dir, resume=resume, echo=_echo_progress(total))
    except Exception as exc:  # noqa: BLE001 - only a full disk is turned into a run error here
        if not _disk_full(exc, run_dir):
            raise
        result = _disk_full_result(exc, run_dir)
    print(f"[tunelab] run {run_dir}: {result['state']} at step {result['step']}"
          + (f" - {result['error']}" if result["error"] else ""), file=sys.stderr)
    if result["state"] == "failed":
        return 2 if result["user_error"] else 1
    return 0


def _disk_full(exc: BaseException, run_dir: Path) -> bool:
    """Whether ``exc`` (an OSError, or safetensors'/torch's own error types) means the disk is full."""
    text = str(exc)
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "StorageFull" in text:
        return True
    try:  # torch's zip writer says only "file write failed"
        return "write failed" in text and shutil.disk_usage(run_dir).free < 64 * 2**20
    except OSError:
        return False


def _disk_full_result(exc: BaseException, run_dir: Path) -> dict:
    """Free what the interrupted save took (its step-N.tmp) and record a clear failure."""
    runs.remove_partial_checkpoints(run_dir)
    shutil.rmtree(run_dir / "final.tmp", ignore_errors=True)  # a full disk while saving final/
    kept = runs.latest_checkpoint(run_dir)
    step = runs.read_status(run_dir).get("step") or 0
    error = (f"the disk holding {run_dir} is full ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
             f"{shutil.disk_usage(run_dir).free // 2**20} MiB free now. Free some space, then "
             f"`python -m tunelab resume {run_dir}` continues from "
             + (f"the last good checkpoint {kept.name}" if kept else "step 0 (no checkpoint was saved)"))
    runs.write_status(run_dir, state="failed", error=error, finished_at=runs.now())
    return {"state": "failed", "step": step, "error": error, "user_error": False}


def cmd_train(args) -> int:

    run_dir = Path(args.run_dir) if args.run_dir else None
    claimed = bool(run_dir and (run_dir / "status.json").exists())
    if claimed:  # a live run: refused at once, before anything is written
        launched = workers.claim_worker(run_dir)
    cfg = load_config(args.config, args.set)
    try:  # a missing or unusable data file is refused before any model loads
        data.check_path(cfg.data.path)
    except UserError as exc:
        raise UserError(f"{args.config}: data.path: {exc}") from None
    try:  # so is a model folder that is not there: no torch import, no run folder left marked failed
        models.check_model_name(cfg.model)
    except UserError as exc:
        raise UserError(f"{args.config}: model: {exc}") from None
    if run_dir is None:
        run_dir = runs.create_run(cfg, Path(args.config).stem)
    if not claimed:
        run_dir.mkdir(parents=True, exist_ok=True)
        launched = workers.claim_worker(run_dir)
    return _run_training(cfg, run_dir, resume=False, launched=launched)


def cmd_resume(args) -> int:
    run_dir = Path(args.run_dir)
    runs.read_status(run_dir)  # a run folder, or a clear error (before a lock file is made in it)
    launched = workers.claim_worker(run_dir)  # a live worker: refused at once
    status = runs.read_status(run_dir)
    if status["state"] == "finished":
        raise UserError(f"run {run_dir.name} has already finished; start a new run to train more")
    return _run_training(runs.run_config(run_dir), run_dir, resume=True, launched=launched)


def cmd_stop(args) -> int:
    workers.request_stop(args.run_dir)
    print(f"asked run {Path(args.run_dir).name} to stop; it saves a checkpoint first")
    return 0


def cmd_status(args) -> int:
    status = runs.read_status(args.run_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    total = status.get("total_steps") or "?"
    print(f"{status['run_id']}: {status['state']}, step {status.get('step', 0)}/{total}")
    if status.get("error"):
        print(f"  {status['error']}")
    rows = [r for r in runs.read_metrics(args.run_dir) if "loss" in r]
    if rows:
        print(f"  last loss {rows[-1]['loss']:.4f}, {rows[-1].get('tokens_per_s', 0):.0f} tokens/s")
    return 0


def cmd_runs(args) -> int:
    """Every run in the run store, newest first: state, steps and the disk it takes."""
    found = runs.list_runs()
    if args.json:
        keys = ("run_id", "state", "step", "total_steps", "disk_bytes", "updated_at", "error", "run_dir")
        print(json.dumps([{k: r.get(k) for k in keys} for r in found], indent=2))
        return 0
    if not found:
        print(f"no runs in {runs.runs_root()}")
        return 0
    print(f"{'run':<40} {'state':<9} {'step':>11} {'disk':>10}  updated")
    for r in found:
        steps = f"{r.get('step') or 0}/{r.get('total_steps') or '?'}"
        print(f"{r['run_id']:<40} {r['state']:<9} {steps:>11} {machine.fmt_bytes(r['disk_bytes']):>10}  "
              f"{(r.get('updated_at') or '').replace('T', ' ')}")
    total = sum(r["disk_bytes"] for r in found)
    print(f"{len(found)} run{'s' if len(found) != 1 else ''}, {machine.fmt_bytes(total)} in {runs.runs_root()}")
    return 0


def cmd_delete(args) -> int:
    """Delete a run that is not live: its folder and everything in it."""
    run_dir = Path(args.run_dir)
    mirror = ray.read_backend(run_dir) if run_dir.is_dir() else None
    freed = runs.delete_run(run_dir)
    print(f"deleted run {run_dir.name} ({machine.fmt_bytes(freed)} freed)"
          + ("; this was the mirror of a run on the Ray box, which keeps its own copy" if mirror else ""))
    return 0


def cmd_generate(args) -> int:
    params = _params(args.param)
    generate.sampler_settings(args.sampler, params)  # an unknown sampler or bad value: before the model loads
    model, tokenizer = models.load_model(args.model)
    if args.no_stream:
        print(generate.generate(model, tokenizer, args.prompt, args.sampler, params, args.max_new_tokens,
                                seed=args.seed))
        return 0
    for piece in generate.generate(model, tokenizer, args.prompt, args.sampler, params, args.max_new_tokens,
                                   seed=args.seed, stream=True):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_eval(args) -> int:
    run_dir = Path(args.run_dir)
    runs.read_status(run_dir)
    cfg = runs.run_config(run_dir)
    data_path = args.data or cfg.data.path
    if not args.data:
        print(f"note: scoring on the training file {data_path}; a model always looks better on what it "
              "trained on. Pass --data with a held-out file for an honest score.", file=sys.stderr)
    if args.limit is not None and (problem := eval_samples_problem(args.limit, "--limit")):
        raise UserError(problem)  # here, to name the flag; evaluate_run applies the same rule
    evaluators = [e.strip() for e in args.evaluators.split(",")] if args.evaluators else None
    report = evaluate.evaluate_run(run_dir, data_path, evaluators=evaluators, sampler=args.sampler,
                                   limit=args.limit, max_new_tokens=args.max_new_tokens,
                                   evaluator_params=evaluate.evaluator_params(_params(args.param)))
    print(json.dumps(report["metrics"], indent=2))
    failed = evaluate.failures(report)  # the others' scores are printed and saved; each failure is one line
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 2 if failed else 0


def cmd_make_tiny_model(args) -> int:
    """A tiny random model for end-to-end checks in seconds (docs/plugins.md, "End to end in two minutes")."""
    folder = Path(args.dir)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty; give a new folder for the tiny model")
    models.make_tiny_model(folder)
    print(f"a tiny random model (2 layers, the embedded tokenizer) is in {folder}: use it as the model "
          f"(model: {folder} in a config, --model {folder}); it writes nonsense, fast")
    return 0


def cmd_memory(args) -> int:
    precision = machine.resolve_precision(args.precision)
    cfg = settings_config(args.model, method=args.method, precision=precision, batch_size=args.batch_size,
                          max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing)
    est = memory.estimate_run(cfg)
    if args.measure:  # a real step with the same settings, in this process (the CLI is its own worker)
        est["measured"] = measure_step(cfg)
    if args.json:
        print(json.dumps(est, indent=2))
        return 0
    for part in ("weights", "gradients", "optimizer", "activations", "logits"):
        print(f"{part:<12} {machine.fmt_bytes(est[part]):>10}")
    print(f"{'peak total':<12} {machine.fmt_bytes(est['total']):>10}  ({precision}; not the plain sum: see core/memory.py)")
    if args.measure:
        m = est["measured"]
        print(f"{'measured':<12} {machine.fmt_bytes(m['peak_bytes']):>10}  ({m['how']}, {m['step_seconds']:.2f} s a step)")
    available, where = machine.available_for_training()
    print(f"verdict: {memory.verdict(est['total'], available)} ({machine.fmt_bytes(available)} of {where})")
    for line in memory.oom_advice(est, available) if memory.verdict(est["total"], available) != "fits" else []:
        print(f"  - {line}")
    return 0


def cmd_measure(args) -> int:
    """One real training step of a config on random tokens: peak memory and speed, as JSON (for workers)."""

    print(json.dumps(measure_step(load_config(args.config, args.set), steps=args.steps)))
    return 0


def cmd_export(args) -> int:
    """Export a finished run to GGUF + Modelfile + README card, verified by reading the GGUF back."""

    sampler = {"name": args.sampler, "params": _params(args.param)} if args.sampler else None

    def progress(fraction, message):
        if sys.stderr.isatty():
            print(f"\r[{fraction:4.0%}] {message[:60]:<60}", end="", file=sys.stderr, flush=True)

    try:
        result = export.export_run(args.run_dir, args.out, args.type, sampler, progress=progress,
                                   keep_anyway=args.keep_anyway)
    except export.ExportCheckFailed as exc:  # the export's own failure, not the user's: exit 1, one line
        print(("\n" if sys.stderr.isatty() else "") + f"error: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if result["kept_anyway"]:
        print(f"warning: {result['verification']['failure']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    check = result["verification"]
    for kind, path in result["paths"].items():
        print(f"{kind:<17} {path} ({machine.fmt_bytes(result['sizes'][kind])})")
    print(f"read back: {'passed' if check['passed'] else 'FAILED, kept anyway'}: perplexity "
          f"{check['perplexity_increase']:+.2%} against final/ (allowed {check['bound']:.1%}), scores moved "
          f"{check['logit_error']:.2%} of their spread (allowed {check['logit_error_bound']:.0%}), top-1 agreement "
          f"{check['top1_agreement']:.1%} over {check['positions']} positions; {result['seconds']['total']:.1f} s")
    print(f"run it:  cd {args.out} && {result['commands']['ollama']}")
    print(f"    or:  {result['commands']['llama_cpp']}")
    return 0


def cmd_prepare_embedded(args) -> int:
    """Convert the embedded model once (``make run`` calls this so the first page load is fast)."""
    t = time.time()
    path = models.ensure_embedded()
    print(f"embedded model ready at {path} ({time.time() - t:.1f} s)")
    return 0


def cmd_experiment(args) -> int:
    """One setting, 2 to 4 values: short runs (here one after another, in the foreground), a verdict, a PNG."""
    setting, values = experiment_driver.parse_vary(args.vary)
    budget = experiment_driver.parse_budget(args.budget)
    cfg = load_config(args.config, args.set)
    try:  # as train: a missing data file or model folder is refused before anything runs
        data.check_path(cfg.data.path)
        models.check_model_name(cfg.model)
    except UserError as exc:
        raise UserError(f"{args.config}: {exc}") from None
    engine = get_engine({"standby": False})  # TUNELAB_BACKEND=ray: the runs are jobs on the box
    return experiment_driver.cli_experiment(engine, cfg.to_dict(), setting, values, budget)


def cmd_experiment_run(args) -> int:
    """The driver of an experiment started by the engine (``tunelab.core.experiment_driver``)."""
    experiment_driver.drive_experiment(args.exp_dir)
    return 0


def cmd_serve(args) -> int:
    """The TuneLab service on a GPU box (``tunelab.core.service``): the Ray backend's interactive verbs."""
    serve(args.host, args.port)
    return 0


def _ray_route(args):
    """The Ray backend's version of train/resume/stop/status, or None to act here: ``train`` when
    TUNELAB_BACKEND=ray, the others when the run folder mirrors a Ray job (it has backend.json)."""
    if args.command not in ("train", "resume", "stop", "status"):
        return None
    if args.command == "train":
        return ray.cli_train if backend_settings()["backend"] == "ray" else None
    if not ray.read_backend(args.run_dir):
        return None
    return {"resume": ray.cli_resume, "stop": ray.cli_stop, "status": ray.cli_status}[args.command]


# -- the standby's worker half (core.standby is the starter's half) ----------------------------------
def _warm_up() -> None:
    """What every worker would do first: import the engine's packages and the embedded model's code."""
    import torch
    import transformers

    # the thread pool and the matrix kernels' first-use set-up, which a first step would pay for
    x = torch.randn(64, 64, requires_grad=True)
    with machine.Precision(machine.resolve_precision("auto"), "cpu").autocast():
        (x @ x).float().sum().backward()
    try:  # the model code (modeling_llama for SmolLM2) is imported on first use: do it now
        config = transformers.AutoConfig.from_pretrained(models.resolve(models.EMBEDDED))
        for arch in config.architectures or []:
            getattr(transformers, arch, None)
        models.load_tokenizer(models.EMBEDDED)
    except Exception:  # noqa: BLE001 - not converted yet, or another default: the worker loads what it needs
        pass


def cmd_standby(args) -> int:
    """``python -m tunelab standby --fd N``: warm up, say ready, wait for one run, then be its worker."""
    sock = socket.socket(fileno=args.fd)
    starter = os.getppid()
    _warm_up()
    sock.sendall(b"ready\n")
    deadline = time.time() + float(os.environ.get("TUNELAB_STANDBY_IDLE_S") or 1800)
    while not select.select([sock], [], [], 1.0)[0]:
        if os.getppid() != starter or time.time() > deadline:
            return 0  # the dashboard is gone, or nobody pressed Start: free the memory
    try:
        message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 2)
    except OSError:
        return 0
    if not message or len(fds) != 2:
        return 0  # the starter closed the socket: not needed
    lock_fd, log_fd = fds
    job = json.loads(message)
    os.dup2(log_fd, 1)  # the run's log.txt, as a fresh worker's stdout and stderr would be
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.clear()
    os.environ.update(job["env"], PYTHONUNBUFFERED="1")  # the starter's, as at Start
    os.environ[workers.LOCK_FD_ENV] = str(lock_fd)  # claim_worker adopts the lock, as from launch()
    try:
        sock.sendall(f"ok {os.getpid()}\n".encode())
        sock.close()
    except OSError:
        return 0  # the starter gave up waiting and starts a fresh worker (it kills this one)
    return main(job["argv"])


# -- the command line --------------------------------------------------------------------------------
def _arg(*flags, **kw):
    return flags, kw


JSON = _arg("--json", action="store_true")
SETS = _arg("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
RUN_DIR = _arg("run_dir")

# (command, help, function, arguments): one row per command, in the order --help lists them
COMMANDS = [
    ("plugins", "list installed plugins", cmd_plugins, [JSON]),
    ("data check", "validate a data file and report on it", cmd_data_check, [
        _arg("file"), _arg("--format", help="data format plugin (default: detect)"),
        _arg("--param", action="append", help="format option name=value"),
        _arg("--model", default="embedded", help="tokenizer for token lengths"),
        _arg("--max-length", type=int, default=512),
        _arg("--no-tokens", action="store_true", help="skip token lengths (no tokenizer load)"), JSON]),
    ("train", "train from a YAML config", cmd_train, [
        _arg("config"), _arg("--run-dir", help="run folder (default: runs/<config name>-<time>)"), SETS]),
    ("resume", "continue a stopped or interrupted run from its last checkpoint", cmd_resume, [RUN_DIR]),
    ("stop", "ask a running run to checkpoint and stop", cmd_stop, [RUN_DIR]),
    ("status", "show a run's state", cmd_status, [RUN_DIR, JSON]),
    ("runs", "list the runs: state, steps and the disk each takes", cmd_runs, [JSON]),
    ("delete", "delete a run that is not running (its folder and everything in it)", cmd_delete, [RUN_DIR]),
    ("generate", "generate an answer", cmd_generate, [
        _arg("--model", default="embedded", help="embedded, a Hub id, a model folder or a run folder"),
        _arg("--prompt", required=True), _arg("--sampler", default="greedy"),
        _arg("--param", action="append", help="sampler parameter name=value"),
        _arg("--max-new-tokens", type=int, default=200), _arg("--seed", type=int, default=0),
        _arg("--no-stream", action="store_true")]),
    ("eval", "evaluate a run's base and tuned model on held-out data", cmd_eval, [
        RUN_DIR, _arg("--data", help="held-out file (default: the run's data file)"),
        _arg("--evaluators", help="comma list (default: all)"), _arg("--sampler", default="greedy"),
        _arg("--limit", type=int, default=None, help="evaluate the first N examples only"),
        _arg("--param", action="append", help="evaluator setting evaluator.name=value"),
        _arg("--max-new-tokens", type=int, default=160)]),
    ("memory", "estimate training memory", cmd_memory, [
        _arg("--model", default="embedded"), _arg("--method", choices=["full", "lora"], default="full"),
        _arg("--precision", choices=["auto", *machine.PRECISIONS], default="auto"),
        _arg("--batch-size", type=int, default=4), _arg("--max-length", type=int, default=256),
        _arg("--gradient-checkpointing", action="store_true"),
        _arg("--measure", action="store_true", help="also run two real training steps and measure them"), JSON]),
    ("measure", "measure a real training step of a config; prints JSON", cmd_measure, [
        _arg("config"), SETS,
        _arg("--steps", type=int, default=2, help="steps to run (AdamW's state appears in the first)")]),
    ("export", "export a finished run to GGUF + an Ollama Modelfile, checked by reading back", cmd_export, [
        RUN_DIR, _arg("--out", required=True, help="folder for NAME.gguf, Modelfile and README.md (created if missing)"),
        _arg("--type", default="f16", help="f16 (full quality) or q8_0 (about half the size)"),
        _arg("--sampler", help="write this sampler into the Modelfile as Ollama PARAMETERs"),
        _arg("--param", action="append", help="sampler parameter name=value"),
        _arg("--keep-anyway", action="store_true", help="keep the file even if the read-back check fails "
                                                         "(the README card records the failure)"), JSON]),
    ("experiment", "vary one setting: 2 to 4 short runs, their curves overlaid (a PNG) and a verdict",
     cmd_experiment, [_arg("config"), _arg("--vary", required=True, metavar="SETTING=V1,V2[,V3,V4]",
                                           help="the setting and its values, e.g. lr=1e-5,1e-4,1e-3"),
                      _arg("--budget", default="120", help="time for all the runs, in seconds (or 2m); default 120"),
                      SETS]),
    ("experiment-run", "(internal) an experiment's driver: its runs one after another (core/experiment_driver.py)",
     cmd_experiment_run, [_arg("exp_dir", help="the experiment's folder, <runs>/experiments/<id>")]),
    ("prepare-embedded", "convert the embedded model once (done by make run)", cmd_prepare_embedded, []),
    ("make-tiny-model", "save a tiny random model (2 layers) for end-to-end checks in seconds", cmd_make_tiny_model,
     [_arg("dir", help="a new folder")]),
    ("serve", "the TuneLab service for the Ray backend (run it on the GPU box)", cmd_serve, [
        _arg("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (put TLS in front)"),
        _arg("--port", type=int, default=8266)]),
    ("standby", "(internal) a training worker started ahead of Start (core/standby.py)", cmd_standby, [
        _arg("--fd", type=int, required=True, help="the socket its starter hands the run over")]),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tunelab", description="TuneLab's fine-tuning engine.")
    sub = p.add_subparsers(dest="command", required=True)
    groups = {}
    for name, help_text, func, arguments in COMMANDS:
        parent = sub
        if " " in name:  # a command with its own sub-commands: "data check"
            group, name = name.split(" ", 1)
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} files").add_subparsers(
                    dest=f"{group}_command", required=True)
            parent = groups[group]
        s = parent.add_parser(name, help=help_text)
        for flags, kw in arguments:
            s.add_argument(*flags, **kw)
        s.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "resume"):
        train.install_stop_signals()
    try:
        remote = _ray_route(args)
        return remote(args) if remote else args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
