"""Experiments: see what one setting does by running it, two to four short runs side by side.

The learner picks one setting (:data:`SETTINGS`) and 2 to 4 values, from suggestions that teach (for
the learning rate: too low, about right, too high). :func:`plan_experiment` copies the planned run
once per value — same seed, data and steps — and sizes the steps so that the runs, one after
another, fit the learner's time budget. The runs are ordinary runs; the verdict
(:func:`tunelab.core.curves.experiment_verdict`) puts what their curves show into words.

Layout: the runs stay where every run lives, direct children of the run store::

    <runs>/<run id>/                      an ordinary run (config.yaml, status.json, metrics.jsonl, ...)
    <runs>/experiments/<exp id>/experiment.json   the experiment's record: its plan, and for each value
                                                  the run id once started (null before), whether it was stopped

Why not the runs inside the experiment's folder: every run verb (open, resume, export, delete, the
queue, ``list_runs``) finds a run as ``<runs>/<run id>/status.json``, and a run id is one folder name
(``find_run`` refuses a ``/``). Kept there, an experiment's runs are listed, resumed, exported and
deleted like any other, with no verb taught about experiments; ``experiments/`` holds no
``status.json``, so ``list_runs`` passes it by, as it passes ``uploads/``. A run deleted on its own
shows as ``deleted`` in the record; the record never owns the run.

This module launches nothing. The engine's verb starts an experiment as::

    plan = plan_experiment(base, "lr", ["1e-5", "1e-4", "1e-3"], budget_s=120, seconds_per_step=s, n_train=n)
    exp = create_experiment(runs_root, plan)
    nxt = next_to_start(exp)           # {"label", "name", "config"} or None
    run_dir = <start an ordinary run of nxt["config"] named nxt["name"]>
    mark_started(exp, nxt["label"], run_dir.name)

and starts the next one when :func:`next_to_start` says so (it answers None while a run of the
experiment is queued or running, so the runs go one after another, as the budget assumes). Stop:
``for run_id in mark_stopped(exp): <stop run_id>`` — no further run starts after it.

Who does that: on this machine a small driver process per experiment (``tunelab.core.experiment_driver``:
``python -m tunelab experiment-run EXP_DIR``, or the CLI's foreground); on the Ray backend the client
submits every run at once as its own Ray job and the record lives in its mirror folder
(``tunelab.core.backends.ray``). The engine's verbs (``Engine.start_experiment``, ``experiment``,
``list_experiments``, ``stop_experiment``) are the way in.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import itertools
import json
import math
import re
import time
from pathlib import Path

from .config import ALIASES, CONFIG_DOCS, RunConfig
from .curves import MIN_ROWS, experiment_verdict
from .errors import UserError
from .paths import runs_root
from .plan import estimate_seconds, warmup_steps
from .runs import ACTIVE, progress, read_metrics, read_status, safe_run_id, shared_deployment, write_atomic

EXPERIMENTS_DIR = "experiments"  # under the run store, beside the runs (see the module docstring)
RECORD = "experiment.json"
MIN_VALUES, MAX_VALUES = 2, 4
MIN_STEPS = MIN_ROWS  # fewer steps and the verdict could only say "too short to tell"
# When the speed is unknown: seconds per optimizer step of the default plan (batch 8, max_length 256, full
# fine-tuning of the 135M model) on this project's reference machine, a 2-core CPU with bf16 autocast:
# 3.6-4.2 s measured, rounded up. Any GPU is far faster (the plan then has fewer steps than it could);
# a 2-core CPU without bf16 is slower (6.6 s in fp32, docs/trials.md) and would overrun: a measured speed
# (:func:`step_seconds`) fixes both.
DEFAULT_SECONDS_PER_STEP = 4.0
# Seconds a run costs beyond its steps: start the worker and import torch, load the model and the data,
# warm up the first step, validate at the end and save final/. Measured for the embedded model on the
# 2-core CPU: a 7-step run of `python -m tunelab train` took 36.8 s from start to exit at 3.4 s a step,
# so 13 s besides its steps (tests/test_experiments.py's slow test); rounded up.
RUN_OVERHEAD_S = 14.0
DEFAULT_BUDGET_S = 120.0
LORA_LR_FACTOR = 10.0  # LoRA usually wants ~10x full fine-tuning's rate (config docs: 1e-5..1e-4 vs 1e-4..1e-3)


# -- the settings an experiment may vary ----------------------------------------------------------
def _suggest_lr(base: RunConfig) -> list[tuple[object, str]]:
    # Measured on the embedded model with the default plan (seed 0, batch 8), runs of 6 to 10 steps.
    # Full fine-tuning: 1e-3 jumps 41% at step 2, 1e-4 ends lowest, 1e-5 falls a third as far (the slow
    # test in tests/test_experiments.py). LoRA: 1e-4 moves 3% in 10 steps, 1e-3 falls 18%, 3e-2 climbs
    # from 2.7 to 16 in 6 steps (1e-2 only jumps 5% and ends low: not a clear "too high").
    if base.method == "lora":
        return [(1e-4, "too low"), (1e-3, "about right"), (3e-2, "too high")]
    return [(1e-5, "too low"), (1e-4, "about right"), (1e-3, "too high")]


def _suggest_rank(base: RunConfig) -> list[tuple[object, str]]:
    return [(4, "narrow: fewest adapter weights"), (16, "the usual width"), (64, "wide: 4x the adapter weights")]


def _suggest_method(base: RunConfig) -> list[tuple[object, str]]:
    return [("full", "every weight learns"), ("lora", "small adapters learn, the rest is frozen")]


def _suggest_batch(base: RunConfig) -> list[tuple[object, str]]:
    small, large = max(1, base.batch_size // 4), base.batch_size * 2
    return [(small, "few examples a step: a noisier curve, faster steps"), (base.batch_size, "the plan's"),
            (large, "more examples a step: a smoother curve, slower steps")]


def _suggest_length(base: RunConfig) -> list[tuple[object, str]]:
    return [(64, "cuts most answers short"), (128, "cuts long answers"), (256, "fits most examples whole")]


def _suggest_epochs(base: RunConfig) -> list[tuple[object, str]]:
    return [(1, "one pass over the data"), (2, "two passes"), (4, "many passes: watch validation loss turn up")]


def _suggest_warmup(base: RunConfig) -> list[tuple[object, str]]:
    return [(0.0, "no warm-up: the first step takes the full rate"), (0.1, "a short ramp"),
            (0.3, "a long ramp: a third of the steps")]


# key -> label, explanation, suggestions(base), what a run of each value costs per step relative to the
# base (the budget is sized by the most expensive value), and a caveat for reading the verdict.
SETTINGS: dict[str, dict] = {
    "lr": {"label": "learning rate", "suggest": _suggest_lr, "cost": "same",
           "explain": "How big a step the optimizer takes. Too low and the loss barely moves in the time you "
                      "have; too high and it jumps up (diverges) instead of falling.",
           "caveat": "A short run favours a higher rate: over a whole run the best rate is often a little lower."},
    "lora.r": {"label": "LoRA rank", "suggest": _suggest_rank, "cost": "same",
               "explain": "The width of LoRA's adapters. A wider adapter can learn more and costs more memory; "
                          "on a small data set the rank often matters less than you would think. "
                          "lora.alpha moves with it (the same alpha / r), so only the width changes.",
               "caveat": ""},
    "method": {"label": "method", "suggest": _suggest_method, "cost": "same",
               "explain": "Full fine-tuning trains every weight; LoRA trains small adapters beside frozen weights. "
                          "Each runs at its usual learning rate (LoRA about 10x full's), or LoRA would look slow "
                          "only because its rate is too low.",
               "caveat": ""},
    "batch_size": {"label": "batch size", "suggest": _suggest_batch, "cost": "batch",
                   "explain": "Examples in each step. Larger batches average more examples, so the curve is "
                              "smoother and each step learns from more data, but a step takes longer.",
                   "caveat": "Same steps, not same time: a larger batch also sees more examples."},
    "max_length": {"label": "max length", "suggest": _suggest_length, "cost": "length",
                   "explain": "The longest example in tokens; longer ones are cut. Short limits train faster on "
                              "the beginnings of answers only.",
                   "caveat": "The losses are measured on differently cut text, so a lower number is not simply "
                             "better: look at how much of the answers each length keeps."},
    "epochs": {"label": "epochs", "suggest": _suggest_epochs, "cost": "same",
               "explain": "Passes over the training data. More passes lower the training loss; once validation "
                          "loss turns up, the model is memorising the examples instead of learning from them.",
               "caveat": ""},
    "warmup_ratio": {"label": "warm-up", "suggest": _suggest_warmup, "cost": "same",
                     "explain": "The share of steps spent ramping the learning rate up from 0. A ramp protects "
                                "the first steps, when the gradients are largest, from a rate that is too high.",
                     "caveat": "Warm-up matters most at a high learning rate; at a gentle one the curves may "
                               "hardly differ."},
}


def setting_key(name: str) -> str:
    """The config key of a setting a user named (``learning_rate`` -> ``lr``); UserError if it cannot vary."""
    key = ALIASES.get(str(name).strip(), str(name).strip())
    if key not in SETTINGS:
        raise UserError(f"experiment: '{name}' is not a setting an experiment can vary; choose one of "
                        f"{', '.join(SETTINGS)}")
    return key


def settings_table(base: RunConfig | None = None) -> list[dict]:
    """Every setting an experiment may vary, for the page: key, label, explanation, caveat, the config's
    help text, the base's current value, and suggestions (``value``, ``text`` label, ``hint``)."""
    base = base or RunConfig()
    return [{"key": key, "label": s["label"], "explain": s["explain"], "caveat": s["caveat"],
             "help": CONFIG_DOCS[key][0], "current": base.get(key), "suggestions": suggestions(key, base)}
            for key, s in SETTINGS.items()]


def suggestions(setting: str, base: RunConfig | None = None) -> list[dict]:
    """The values that teach for ``setting`` given the planned run: ``[{"value", "text", "hint"}]``."""
    key = setting_key(setting)
    return [{"value": v, "text": format_value(v), "hint": hint}
            for v, hint in SETTINGS[key]["suggest"](base or RunConfig())]


def format_value(value) -> str:
    """A value as a short label: 1e-4 (not 0.0001), 3e-5, 0.1, 16, lora."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float) and 0 < abs(value) < 1e-2:
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


def parse_value(setting: str, raw, base: RunConfig | None = None):
    """``raw`` (a number, or text such as ``"1e-4"``) as a value of ``setting``, checked against the
    config's rules; UserError naming the setting and the value otherwise."""
    key = setting_key(setting)
    probe = copy.deepcopy(base or RunConfig())
    where = f"experiment on {SETTINGS[key]['label']} ({key}), value {raw!r}"
    if isinstance(raw, str) and not raw.strip():
        raise UserError(f"{where}: the value is empty")
    try:
        probe.set(key, raw.strip() if isinstance(raw, str) else raw, where=where)
        probe.validate(where)
    except UserError as exc:
        msg = str(exc)
        raise UserError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return probe.get(key)


# -- the plan -------------------------------------------------------------------------------------
def step_seconds(base: RunConfig, median_tokens: float, tokens_per_s: float) -> float:
    """Seconds one optimizer step of ``base`` takes at a measured speed (``tunelab.core.plan.estimate_seconds``
    of a one-step run): what :func:`plan_experiment` sizes by."""
    one = copy.deepcopy(base)
    one.max_steps = 1
    return estimate_seconds(one, 1, median_tokens, tokens_per_s)


def _step_cost(key: str, value, base: RunConfig, median_tokens: float | None) -> float:
    """A step's cost at ``value`` relative to the base's: linear in examples per step (batch) and in tokens
    per example (length; capped at the median example when known, else assumed to fill max_length)."""
    kind = SETTINGS[key]["cost"]
    if kind == "batch":
        return value / base.batch_size
    if kind == "length":
        if median_tokens:
            return min(value, median_tokens) / min(base.max_length, median_tokens)
        return value / base.max_length
    return 1.0


def _run_config(base: RunConfig, key: str, value) -> tuple[RunConfig, dict]:
    """The base with ``key`` = ``value`` and the companion changes that keep the comparison fair."""
    cfg = copy.deepcopy(base)
    cfg.set(key, value, where=f"experiment value for {key}")
    changes = {key: value}
    if key == "method" and value != base.method:
        cfg.lr = base.lr * LORA_LR_FACTOR if value == "lora" else base.lr / LORA_LR_FACTOR
        changes["lr"] = cfg.lr
    if key == "lora.r":
        cfg.lora.alpha = max(1, round(value * base.lora.alpha / base.lora.r))
        changes["lora.alpha"] = cfg.lora.alpha
    if key == "epochs":
        cfg.max_steps = 0  # epochs set the length; the plan may shorten all runs alike (max_steps) below
    cfg.log_every = 1  # every step a metrics row: the verdict reads every step (logging changes no weight)
    return cfg, changes


def plan_experiment(base: RunConfig, setting: str, values: list, budget_s: float = DEFAULT_BUDGET_S,
                    seconds_per_step: float | None = None, n_train: int = 0,
                    median_tokens: float | None = None, overhead_s: float = RUN_OVERHEAD_S) -> dict:
    """One short run per value, sized to fit ``budget_s`` when they run one after another.

    ``base``: the planned run; ``values``: 2 to 4 values of ``setting`` (numbers or text);
    ``seconds_per_step``: seconds per optimizer step of ``base`` (:func:`step_seconds`), None when
    not measured (then ``DEFAULT_SECONDS_PER_STEP``, a slow machine's, and the plan says so);
    ``n_train``: training examples (after the validation split), for the planned run's length and epochs;
    ``median_tokens``: tokens of the median example, optional (sizes a max_length experiment tighter);
    ``overhead_s``: seconds a run costs beyond its steps.

    Every run keeps the base's seed, data and validation share. Each takes the same number of steps: as
    many as fit (``budget_s / runs - overhead_s`` seconds of steps, at the most expensive value's step
    cost), at most the planned run's, at least ``MIN_STEPS`` (else UserError saying the budget needed).
    An epochs experiment runs each value's own length, all shortened alike when they do not fit.

    Returns a JSON-ready dict: ``setting``, ``label``, ``explain``, ``caveat``, ``values``, ``runs``
    (``label``, ``value``, ``hint``, ``name``, ``changes``, ``steps``, ``estimated_s``, ``config``),
    ``steps``, ``planned_steps``, ``seconds_per_step``, ``speed_known``, ``overhead_s``, ``budget_s``,
    ``estimated_s``, ``validation``, ``why`` (the sizing in words) and ``notes``. ``steps`` is one number,
    or a list for an epochs experiment (each value its own length).
    """
    key = setting_key(setting)
    parsed = _checked_values(base, key, values, budget_s, seconds_per_step)
    hints = {v: h for v, h in SETTINGS[key]["suggest"](base)}
    speed_known = seconds_per_step is not None
    sps = float(seconds_per_step) if speed_known else DEFAULT_SECONDS_PER_STEP
    configs = [_run_config(base, key, v) for v in parsed]
    costs = [_step_cost(key, v, base, median_tokens) for v in parsed]
    speed = (f"{sps:.1f} s per step" + ("" if speed_known else
             " (not measured: a 2-core CPU's figure is assumed; measure the speed for a plan that fits this machine)"))
    planned = base.total_steps(max(1, n_train))
    steps, why = _sized_steps(key, parsed, [c for c, _ in configs], costs, budget_s, sps, speed, overhead_s,
                              n_train, planned)
    runs_out = []
    for (cfg, changes), v, s, c in zip(configs, parsed, steps, costs):
        cfg.max_steps = s
        cfg.validate(f"experiment value {format_value(v)}")
        text = format_value(v)
        runs_out.append({"label": text, "value": v, "hint": hints.get(v, ""), "changes": changes, "steps": s,
                         "name": f"exp {key} {text}", "estimated_s": round(overhead_s + s * sps * c, 1),
                         "warmup_steps": warmup_steps(cfg, s), "config": cfg.to_dict()})
    return {"setting": key, "label": SETTINGS[key]["label"], "explain": SETTINGS[key]["explain"],
            "caveat": SETTINGS[key]["caveat"], "values": parsed, "runs": runs_out,
            "steps": steps[0] if len(set(steps)) == 1 else steps, "planned_steps": planned,
            "seconds_per_step": sps, "speed_known": speed_known, "overhead_s": overhead_s,
            "budget_s": float(budget_s), "estimated_s": round(sum(r["estimated_s"] for r in runs_out), 1),
            "validation": base.data.val_fraction > 0, "seed": base.seed, "base": base.to_dict(),
            "why": why, "notes": _notes(key, base, runs_out)}


def check_values(base: RunConfig, setting: str, values, budget_s=DEFAULT_BUDGET_S) -> list:
    """The values of ``setting`` parsed, or the UserError :func:`plan_experiment` would raise for them (their
    count, a bad or repeated value, the budget): what a caller checks before it reads the data."""
    return _checked_values(base, setting_key(setting), values, budget_s, None)


def _checked_values(base: RunConfig, key: str, values, budget_s, seconds_per_step) -> list:
    """The values parsed, after checking their count, that they differ, the budget and the speed."""
    label = SETTINGS[key]["label"]
    if not isinstance(values, (list, tuple)) or not MIN_VALUES <= len(values) <= MAX_VALUES:
        n = len(values) if isinstance(values, (list, tuple)) else 0
        raise UserError(f"experiment on {label}: choose {MIN_VALUES} to {MAX_VALUES} values, got {n}")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise UserError(f"experiment: the time budget must be a positive number of seconds, got {budget_s!r}")
    if seconds_per_step is not None and not (math.isfinite(seconds_per_step) and seconds_per_step > 0):
        raise UserError(f"experiment: seconds per step must be positive, got {seconds_per_step!r}")
    if key == "lora.r" and base.method != "lora":
        raise UserError("experiment on LoRA rank (lora.r): the planned run uses method full, which has no "
                        "adapters; set method: lora first, or vary another setting")
    parsed, seen = [parse_value(key, v, base) for v in values], {}
    for raw, v in zip(values, parsed):
        if v in seen:
            raise UserError(f"experiment on {label}: the values must differ; {raw!r} is the same as {seen[v]!r}")
        seen[v] = raw
    return parsed


def _sized_steps(key, parsed, configs, costs, budget_s, sps, speed, overhead_s, n_train, planned):
    """``(steps of each run, why in words)``: as many as fit the budget one run after another."""
    n, dearest = len(parsed), max(range(len(parsed)), key=lambda i: costs[i])
    if key == "epochs":
        natural = [cfg.total_steps(max(1, n_train)) for cfg in configs]
        room, need = budget_s - n * overhead_s, sum(natural) * sps
        scale = 1.0 if need <= room else max(0.0, room) / need
        steps = [max(MIN_STEPS, math.floor(s * scale)) for s in natural]
        why = (f"{n} runs one after another, each {overhead_s:.0f} s to start, validate and save, at {speed}: "
               + ("each runs its whole length" if scale >= 1 else
                  f"all shortened alike to {scale:.0%} of their length to fit {budget_s:.0f} s "
                  f"(whole, they need about {n * overhead_s + need:.0f} s)")
               + f": {', '.join(f'{format_value(v)} epoch(s) = {s} steps' for v, s in zip(parsed, steps))}.")
        # the budget where the shortest value's run still gets MIN_STEPS
        need_s = sum(overhead_s + math.ceil(s * MIN_STEPS / min(natural)) * sps for s in natural)
    else:
        fit = math.floor((budget_s / n - overhead_s) / (sps * costs[dearest]))
        cap = max(planned, MIN_STEPS)
        steps = [min(fit, cap)] * n
        dear = (f" at the most expensive value ({format_value(parsed[dearest])}, {costs[dearest]:.1f}x a step of "
                "the plan)" if costs[dearest] > 1 else "")
        why = (f"{n} runs one after another in {budget_s:.0f} s: {budget_s / n:.0f} s each, of which about "
               f"{overhead_s:.0f} s go to starting, validating and saving, at {speed}{dear}: "
               + (f"{steps[0]} steps each" if fit <= cap else
                  f"{steps[0]} steps each, the planned run's whole length (the budget would allow {fit})")
               + f". The planned run has {planned} steps.")
        need_s = n * (overhead_s + MIN_STEPS * sps * costs[dearest])
    total_s = sum(overhead_s + s * sps * c for s, c in zip(steps, costs))
    if min(steps) < MIN_STEPS or total_s > budget_s + 1e-6:
        raise UserError(f"experiment: {budget_s:.0f} s is too short for {n} runs of at least {MIN_STEPS} steps "
                        f"(the fewest a curve can be read from) at {speed}; raise the budget to about "
                        f"{math.ceil(need_s / 10) * 10:.0f} s, or try fewer values")
    return steps, why


def _notes(key: str, base: RunConfig, runs_out: list[dict]) -> list[str]:
    """What the learner should know to read the runs: companion changes, ramps, what ranks them, caveats."""
    notes = []
    if key == "method":
        notes.append(f"LoRA runs at {LORA_LR_FACTOR:g}x full fine-tuning's learning rate "
                     f"({', '.join(r['label'] + ': lr ' + format_value(r['config']['lr']) for r in runs_out)}).")
    if key == "warmup_ratio":
        notes.append("Warm-up in steps: " + ", ".join(f"{r['label']}: {r['warmup_steps']} of {r['steps']}"
                                                       for r in runs_out) + ".")
    if base.data.val_fraction > 0:
        notes.append(f"Each run validates on the same held-out {base.data.val_fraction:.0%} at its end; the verdict "
                     "ranks by that validation loss.")
    else:
        notes.append("The planned run holds out no validation examples, so the verdict ranks by training loss.")
    if SETTINGS[key]["caveat"]:
        notes.append(SETTINGS[key]["caveat"])
    return notes


def run_configs(plan: dict) -> list[dict]:
    """What must be started, in order: ``[{"label", "name", "config": RunConfig}]``."""
    return [{"label": r["label"], "name": r["name"],
             "config": RunConfig.from_dict(r["config"], where=f"experiment run {r['label']}")} for r in plan["runs"]]


# -- the record -----------------------------------------------------------------------------------
def experiments_root(root=None) -> Path:
    return Path(root or runs_root()) / EXPERIMENTS_DIR


def create_experiment(root, plan: dict, owner: str | None = None) -> Path:
    """Write ``<root>/experiments/<exp id>/experiment.json`` (``root``: the run store, None = the default
    one) with the plan and no run started yet. ``owner``: the session that starts it (its runs are that
    session's, see ``tunelab.core.runs.can_control``). Returns the experiment's folder."""
    folder = experiments_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    exp_id = safe_run_id(f"{plan['setting']} experiment")
    for n in itertools.count(1):  # as create_run: two experiments in one second get exp and exp-2
        path = folder / (exp_id if n == 1 else f"{exp_id}-{n}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    record = {"id": path.name, "created": time.time(), "setting": plan["setting"], "label": plan["label"],
              "stopped": False, "owner": owner, "plan": plan,
              "runs": [{"label": r["label"], "value": r["value"], "name": r["name"], "run_id": None,
                        "started_at": None} for r in plan["runs"]]}
    write_atomic(path / RECORD, json.dumps(record, indent=2))
    return path


def experiment_folder(exp_id: str, root=None) -> Path:
    """The folder of the experiment called ``exp_id`` (a folder name under ``<runs>/experiments``);
    UserError when there is none."""
    exp_id = str(exp_id or "")
    folder = experiments_root(root) / exp_id
    if not re.fullmatch(r"[^/\\]+", exp_id) or exp_id.startswith(".") or not (folder / RECORD).is_file():
        raise UserError(f"there is no experiment called '{exp_id}' in {experiments_root(root)}")
    return folder


def _folder(path) -> Path:
    path = Path(path)
    folder = path.parent if path.name == RECORD else path
    if not (folder / RECORD).is_file():
        raise UserError(f"{folder} is not an experiment (no {RECORD})")
    return folder


def _load(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / RECORD} cannot be read: {exc}") from None


@contextlib.contextmanager
def _updating(path):
    """The record, locked against a second writer, written back atomically when the block ends."""
    folder = _folder(path)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _load(folder)
        yield record
        write_atomic(folder / RECORD, json.dumps(record, indent=2))


def _run_root(folder: Path) -> Path:
    return folder.parent.parent  # <runs>/experiments/<id> -> <runs>


def _run_state(run_root: Path, entry: dict) -> dict:
    """One value's run as the record sees it: pending (not started), deleted, or its progress."""
    if not entry.get("run_id"):
        return {"state": "pending", "progress": None, "status": None, "rows": []}
    run_dir = run_root / entry["run_id"]
    try:
        status, prog = read_status(run_dir), progress(run_dir)
    except UserError:
        return {"state": "deleted", "progress": None, "status": None, "rows": []}
    keep = ("step", "total_steps", "fraction", "eta_s", "last_loss", "error")
    return {"state": status.get("state"), "progress": {k: prog.get(k) for k in keep}, "status": status,
            "rows": read_metrics(run_dir)}


def read_experiment(path) -> dict:
    """The record plus, for each value, its run's ``state`` (``pending`` before it starts, ``deleted`` when
    its folder is gone, else the run's own), ``progress`` and metrics ``rows``; the experiment's ``state``
    (``running``, ``waiting`` for its next run to start, ``stopped`` or ``finished``); and the ``verdict``
    so far (:func:`tunelab.core.curves.experiment_verdict`), ``final`` once every run has ended."""
    folder = _folder(path)
    record = _load(folder)
    root = _run_root(folder)
    for entry in record["runs"]:
        entry.update(_run_state(root, entry))
    states = [e["state"] for e in record["runs"]]
    if any(s in ACTIVE for s in states):
        state = "running"
    elif "pending" in states:
        state = "stopped" if record.get("stopped") else "waiting"
    else:
        state = "stopped" if record.get("stopped") or "stopped" in states else "finished"
    shown = [e for e in record["runs"] if e["state"] != "deleted"]
    record["verdict"] = experiment_verdict([{"label": e["label"], "rows": e["rows"], "status": e["status"]}
                                            for e in shown])
    record.update(state=state, final=state in ("stopped", "finished"), path=str(folder))
    return record


def list_experiments(root=None) -> list[dict]:
    """Every experiment in the run store, newest first (:func:`read_experiment` of each)."""
    folder = experiments_root(root)
    found = sorted(folder.glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    out = []
    for record in found:
        try:
            out.append(read_experiment(record.parent))
        except UserError:
            continue
    return out


def next_to_start(path) -> dict | None:
    """The next value's run to start, ``{"label", "name", "config"}``, or None: when the experiment was
    stopped, every run has started, or one of its runs is still queued or running (one at a time)."""
    folder = _folder(path)
    record = _load(folder)
    if record.get("stopped"):
        return None
    root = _run_root(folder)
    for entry in record["runs"]:
        if entry.get("run_id") and _run_state(root, entry)["state"] in ACTIVE:
            return None
    configs = {r["label"]: r for r in run_configs(record["plan"])}
    for entry in record["runs"]:
        if not entry.get("run_id"):
            return configs[entry["label"]]
    return None


def mark_started(path, label: str, run_id: str) -> dict:
    """Record that ``label``'s run is the run ``run_id`` (a folder name in the run store). Returns the record."""
    if not run_id or not re.fullmatch(r"[^/\\]+", str(run_id)) or str(run_id).startswith("."):
        raise UserError(f"experiment: {run_id!r} is not a run id (a folder name in the run store)")
    with _updating(path) as record:
        entry = next((e for e in record["runs"] if e["label"] == label), None)
        if entry is None:
            raise UserError(f"experiment {record['id']}: no value '{label}'; its values are "
                            f"{', '.join(e['label'] for e in record['runs'])}")
        if record.get("stopped"):
            raise UserError(f"experiment {record['id']} was stopped; its runs can be resumed one by one")
        if entry.get("run_id") and entry["run_id"] != run_id:
            raise UserError(f"experiment {record['id']}: {label} already ran as {entry['run_id']}")
        entry.update(run_id=run_id, started_at=time.time())
    return record


def run_ids(path) -> list[str]:
    """The ids of the experiment's runs started so far, in the order of its values."""
    return [e["run_id"] for e in _load(_folder(path))["runs"] if e.get("run_id")]


def was_stopped(path) -> bool:
    """Whether the experiment was stopped (:func:`mark_stopped`): no further run of it may start."""
    return bool(_load(_folder(path)).get("stopped"))


def check_owner(path, owner: str | None, verb: str = "stop") -> None:
    """On a shared server (``TUNELAB_SHARED=1``), only the session that started an experiment may ``verb``
    it; anyone may on a single-user install (as for runs: ``tunelab.core.runs.can_control``)."""
    record = _load(_folder(path))
    if shared_deployment() and (owner is None or record.get("owner") != owner):
        raise UserError(f"experiment {record['id']} was started by another session; on this shared server only "
                        f"the session that started it can {verb} it")


def mark_stopped(path) -> list[str]:
    """Stop the experiment: no further run of it starts. Returns the ids of its runs still queued or
    running, for the caller to stop (each an ordinary run: the engine's stop verb)."""
    with _updating(path) as record:
        record["stopped"] = True
    root = _run_root(_folder(path))
    return [e["run_id"] for e in record["runs"] if e.get("run_id") and _run_state(root, e)["state"] in ACTIVE]
