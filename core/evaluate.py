"""Evaluate: score a model's answers on held-out examples with evaluator plugins, base vs tuned.

1. :func:`load_samples` reads a data file into samples: the conversation up to the
   last assistant turn is the ``prompt``, that turn's text the ``reference``.
2. :func:`evaluate_model` generates an answer for every prompt (same sampler and
   seed for every model, so differences come from the weights), then runs each
   evaluator plugin over the samples. An evaluator that fails is reported with
   its error and skipped; the others still run.
3. :func:`compare` does this for the base and the fine-tuned model on the same
   prompts; :func:`save_report` keeps the result as ``runs/<id>/eval/report.json``.

No Streamlit here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import eval_samples_problem
from .errors import UserError
from .registry import get_registry, resolve_params
from . import models, runs
from .data import encode_messages, load_records
from .generate import generate_batch
from .machine import Precision, resolve_precision

REPORT = Path("eval") / "report.json"


def load_samples(path, format: str | None = None, limit: int | None = None, params: dict | None = None,
                 registry=None) -> list[dict]:
    """Held-out samples ``{"prompt", "reference", "messages"}`` from a data file.

    ``prompt`` is the message list up to the last assistant turn, ``reference``
    that turn's content, ``messages`` the conversation through it (what
    perplexity scores). Records without an assistant answer (raw text) are skipped.
    """
    dataset, fmt = load_records(path, format, params, registry=registry)
    samples = []
    for record in dataset:
        messages = [m for m in (record.get("messages") or []) if m and m.get("role")]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if not last:  # None (no answer) or 0 (an answer with no question)
            continue
        samples.append({"prompt": messages[:last], "reference": messages[last]["content"] or "",
                        "messages": messages[: last + 1]})
        if limit and len(samples) >= limit:
            break
    if not samples:
        raise UserError(f"{Path(path).name}: no example has an assistant answer to compare against "
                        f"(read as format '{fmt}'); evaluation needs instruction or chat data, not raw text")
    return samples


def evaluate_model(model, tokenizer, samples: list[dict], evaluators=None, sampler: str = "greedy",
                   params: dict | None = None, max_new_tokens: int = 200, max_length: int = 512,
                   progress=None, evaluator_params: dict | None = None, seed: int = 0, registry=None,
                   batch_size: int = 8, precision: str = "auto") -> dict:
    """Generate an answer per sample, then score them with each evaluator.

    ``precision`` is resolved as training's is, for the model's device (``auto``: bf16 autocast on
    a CPU with native bf16 or a GPU, else fp32); generation and the evaluators run under its
    autocast, so both models of a comparison are measured the same way. On the lesson, bf16
    moved the tuned perplexity by 0.1% and halved the perplexity pass (docs/results.md). While it
    runs, autocast keeps a 16-bit copy of the weights (+0.25 GB for SmolLM2-135M).

    ``evaluators``: names (default: every installed one). ``evaluator_params``:
    ``{evaluator: {param: value}}``. Answers are generated ``batch_size`` at a time
    (several times faster on a CPU); ``progress(i, n)`` is called after each batch.
    Returns ``{"metrics": {evaluator: {metric: value} or {"error": str}},
    "samples": [{"prompt", "question", "reference", "answer", "scores": {evaluator: value}}],
    "evaluators": {name: {"higher_is_better", "description"}}, "settings": {...}}``.
    """
    registry = registry or get_registry()
    # A user's mistake (unknown name, bad param) stops here, before minutes of generation.
    plugins, settings = evaluator_settings(evaluators, evaluator_params, registry)
    device = next(model.parameters()).device
    asked, precision = precision, resolve_precision(precision, device.type)
    if asked == "auto" and precision == "fp16":
        precision = "fp32"  # a GPU without bf16: fp16 generation can overflow, so full precision
    with Precision(precision, device).autocast():
        answers = generate_batch(model, tokenizer, [s["prompt"] for s in samples], sampler, params, max_new_tokens,
                                 seed=seed, batch_size=batch_size, registry=registry, progress=progress)
        answered = [{**sample, "answer": answer} for sample, answer in zip(samples, answers)]
        context = {"model": model, "tokenizer": tokenizer, "max_length": max_length,
                   "encode": _encoder(tokenizer, max_length), "precision": precision}
        metrics, per_sample = _score(plugins, settings, answered, context, registry)
    return {
        "metrics": metrics,
        "samples": [{"prompt": s["prompt"], "question": _last_user(s["prompt"]), "reference": s["reference"],
                     "answer": s["answer"], "scores": {n: scores[i] for n, scores in per_sample.items()}}
                    for i, s in enumerate(answered)],
        "evaluators": {n: {"higher_is_better": p.higher_is_better, "description": p.description}
                       for n, p in plugins.items()},
        "settings": {"sampler": sampler, "params": params or {}, "max_new_tokens": max_new_tokens,
                     "max_length": max_length, "seed": seed, "n": len(samples), "precision": precision},
    }


def evaluator_settings(evaluators=None, evaluator_params: dict | None = None, registry=None) -> tuple[dict, dict]:
    """``({name: evaluator}, {name: its resolved params})``; ``evaluators`` None means every installed one.

    An unknown evaluator, a setting for one not run, or a bad value is a ``UserError``.
    """
    registry = registry or get_registry()
    names = list(evaluators) if evaluators is not None else list(registry.items("evaluators"))
    plugins = {name: registry.get("evaluators", name) for name in names}
    stray = sorted(set(evaluator_params or {}) - set(plugins))
    if stray:
        raise UserError(f"settings given for {', '.join(stray)}, which is not among the evaluators run "
                        f"({', '.join(plugins) or 'none'})")
    settings = {}
    for name, plugin in plugins.items():
        try:
            settings[name] = resolve_params(plugin.params, (evaluator_params or {}).get(name))
        except UserError as exc:
            raise UserError(f"evaluator '{name}': {exc}") from None
    return plugins, settings


def _score(plugins: dict, settings: dict, answered: list[dict], context: dict, registry) -> tuple[dict, dict]:
    """``(metrics, per_sample)``: each evaluator's figures, or its error (one broken evaluator loses no others).

    Each ``evaluate`` runs under the registry's guard: a failure is recorded as the evaluator's
    ``{"error": one line}`` naming its plugin (``TUNELAB_STRICT_PLUGINS=1``: raised).
    """
    metrics, per_sample = {}, {}
    for name, plugin in plugins.items():
        try:
            with registry.guard("evaluators", name, "evaluate"):
                result = plugin.evaluate(answered, context, **settings[name])
                if not isinstance(result, dict):
                    raise TypeError(f"returned {type(result).__name__}, not a dict of metrics")
                result = dict(result)
                scores = list(result.pop("per_sample", [None] * len(answered)))
                if len(scores) != len(answered):
                    raise ValueError(f"returned {len(scores)} per-sample scores for {len(answered)} samples")
                figures = {k: float(v) for k, v in result.items()}
        except UserError as exc:  # a PluginError, or the evaluator saying what the user must change
            metrics[name] = {"error": str(exc)}
            continue
        per_sample[name], metrics[name] = scores, figures
    return metrics, per_sample


def failures(report: dict) -> list[str]:
    """One line per evaluator that failed in a report (:func:`compare`'s or :func:`evaluate_model`'s)."""
    lines = []
    for name, entry in (report.get("metrics") or {}).items():
        for side in ("base", "tuned") if "tuned" in entry else (None,):
            error = (entry[side] if side else entry).get("error")
            if error and error not in lines:
                lines.append(error if "plugin '" in error else f"evaluator '{name}': {error}")
    return lines


def evaluator_params(pairs: dict) -> dict:
    """``{"evaluator.param": value}`` (the CLI's ``--param``) as ``{evaluator: {param: value}}``."""
    out = {}
    for key, value in pairs.items():
        evaluator, dot, param = key.partition(".")
        if not dot or not evaluator or not param:
            raise UserError(f"--param {key}={value}: name the evaluator, as evaluator.name=value "
                            "(e.g. --param keyword_coverage.max_keywords=5)")
        out.setdefault(evaluator, {})[param] = value
    return out


def compare(base, tuned, samples: list[dict], progress=None, **kwargs) -> dict:
    """Evaluate ``base`` and ``tuned`` (each a ``(model, tokenizer)`` pair) on the same prompts and settings.

    Returns ``{"metrics": {evaluator: {"base": {...}, "tuned": {...}, "delta": {metric: tuned - base}}},
    "base": report, "tuned": report}`` (reports as from :func:`evaluate_model`).
    ``progress(i, 2n)`` counts both models' answers. Other arguments go to :func:`evaluate_model`.
    """
    n = len(samples)
    reports = {}
    for offset, (label, (model, tokenizer)) in enumerate([("base", base), ("tuned", tuned)]):
        step = (lambda i, _n, o=offset * n: progress(o + i, 2 * n)) if progress else None
        reports[label] = evaluate_model(model, tokenizer, samples, progress=step, **kwargs)
    metrics = {}
    for name, after in reports["tuned"]["metrics"].items():
        before = reports["base"]["metrics"].get(name, {})
        delta = {k: v - before[k] for k, v in after.items() if k != "error" and k in before}
        metrics[name] = {"base": before, "tuned": after, "delta": delta}
    return {"metrics": metrics, **reports}


def evaluate_run(run_dir, data_path=None, evaluators=None, sampler: str = "greedy", params: dict | None = None,
                 limit: int | None = None, max_new_tokens: int = 200, format: str | None = None,
                 progress=None, registry=None, evaluator_params: dict | None = None, loaded=None) -> dict:
    """Compare a run's base model with its fine-tuned ``final/`` and save ``eval/report.json``.

    ``data_path`` defaults to the run's training file: pass a held-out file for an
    honest score (a model is always better on what it trained on). ``loaded`` is an
    optional ``(base, tuned)`` pair of ``(model, tokenizer)`` already in memory (the
    dashboard's cached models); otherwise both are loaded. The CLI's ``eval``.
    """
    import datetime as dt

    if limit is not None and (problem := eval_samples_problem(limit)):
        raise UserError(problem)
    run_dir = Path(run_dir)
    cfg = runs.run_config(run_dir)
    evaluator_settings(evaluators, evaluator_params, registry)  # a bad name or setting: before any model loads
    if not (run_dir / "final").is_dir():
        raise UserError(f"{run_dir} has no final/ model yet: evaluate after training finishes "
                        f"(or resume it: python -m tunelab resume {run_dir})")
    same_file = data_path is None or Path(data_path).resolve() == Path(cfg.data.path).resolve()
    data_path = data_path or cfg.data.path
    samples = load_samples(data_path, format or (cfg.data.format if same_file else None) or None, limit,
                           params=cfg.data.params if same_file else None, registry=registry)
    base, tuned = loaded or (models.load_model(cfg.model), models.load_model(str(run_dir / "final")))
    report = compare(base, tuned, samples, progress=progress, evaluators=evaluators, sampler=sampler,
                     params=params, max_new_tokens=max_new_tokens, max_length=cfg.max_length, registry=registry,
                     evaluator_params=evaluator_params)
    report["data"] = {"path": str(data_path), "training_file": same_file, "samples": len(samples)}
    report["created_at"] = dt.datetime.now().isoformat(timespec="seconds")
    save_report(run_dir, report)
    return report


def save_report(run_dir, report: dict) -> Path:
    """Write ``report`` to ``<run_dir>/eval/report.json`` (NaN and infinity as null: strict JSON)."""
    path = Path(run_dir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(report), indent=2, ensure_ascii=False))
    tmp.replace(path)  # atomic: the dashboard never reads half a report
    return path


def load_report(run_dir) -> dict | None:
    """The saved report of a run, or None if it has not been evaluated yet."""
    path = Path(run_dir) / REPORT
    return json.loads(path.read_text()) if path.is_file() else None


# -- reading a report: what changed, and where ------------------------------------------------

def summary_rows(report: dict) -> list[dict]:
    """Base against tuned, one row per metric that both models have:
    ``{"evaluator", "metric", "base", "tuned", "change", "relative_change", "higher_is_better", "verdict"}``.

    ``verdict`` is ``better`` / ``same`` / ``worse`` in the evaluator's own direction (lower
    perplexity is better); ``relative_change`` is None when the base is 0.
    """
    info = (report.get("tuned") or {}).get("evaluators", {})
    rows = []
    for name, entry in (report.get("metrics") or {}).items():
        higher = info.get(name, {}).get("higher_is_better", True)
        for metric, change in (entry.get("delta") or {}).items():
            if change is None:
                continue
            base = entry["base"].get(metric)
            better = change > 0 if higher else change < 0
            rows.append({"evaluator": name, "metric": metric, "base": base, "tuned": entry["tuned"].get(metric),
                         "change": change, "relative_change": change / base if base else None,
                         "higher_is_better": higher,
                         "verdict": "better" if better else ("same" if change == 0 else "worse")})
    return rows


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rankable(report: dict) -> list[str]:
    """The evaluators with a per-sample score for both models on at least one sample."""
    pairs = list(zip(report["base"]["samples"], report["tuned"]["samples"]))
    return [name for name in report.get("metrics") or {}
            if any(_finite_number(b["scores"].get(name)) and _finite_number(t["scores"].get(name)) for b, t in pairs)]


def rank_samples(report: dict, by: str, k: int | None = None) -> dict:
    """The samples where training helped most (``best``, most improved first) and hurt most
    (``worst``, most hurt first) by evaluator ``by``'s per-sample score.

    ``k`` defaults to 3, or half the samples when there are fewer than 6, so a sample is never
    both. Each entry: ``{"index", "question", "reference", "base_answer", "tuned_answer",
    "base", "tuned", "change"}`` (scores of ``by``; ``change`` = tuned - base).
    """
    higher = (report["tuned"].get("evaluators") or {}).get(by, {}).get("higher_is_better", True)
    entries = []
    for i, (b, t) in enumerate(zip(report["base"]["samples"], report["tuned"]["samples"])):
        before, after = b["scores"].get(by), t["scores"].get(by)
        if _finite_number(before) and _finite_number(after):
            entries.append({"index": i, "question": b["question"], "reference": b["reference"],
                            "base_answer": b["answer"], "tuned_answer": t["answer"],
                            "base": before, "tuned": after, "change": after - before})
    entries.sort(key=lambda e: e["change"] if higher else -e["change"], reverse=True)  # most improved first
    k = min(3, max(1, len(entries) // 2)) if k is None else k
    return {"by": by, "higher_is_better": higher, "best": entries[:k],
            "worst": list(reversed(entries[-k:])) if entries else []}


def with_comparison(report: dict | None) -> dict | None:
    """``report`` plus ``summary`` (:func:`summary_rows`) and ``ranking`` ({evaluator:
    :func:`rank_samples`} for each :func:`rankable` one): what the Evaluate page shows."""
    if report is None:
        return None
    return {**report, "summary": summary_rows(report),
            "ranking": {name: rank_samples(report, name) for name in rankable(report)}}


def _encoder(tokenizer, max_length: int):
    """``encode(messages) -> {input_ids, labels}`` masked exactly as in training (for perplexity)."""
    return lambda messages: encode_messages(messages, tokenizer, max_length)


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
