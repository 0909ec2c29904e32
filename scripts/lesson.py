"""Run the whole default lesson headless and write the measured before/after report.

    python scripts/lesson.py                      # what `make lesson` runs
    python scripts/lesson.py --set method=lora --set lr=1e-3 --out docs/trials/lora-1e-3

1. Fine-tune the embedded model with configs/lesson.yaml (as the dashboard would).
2. Evaluate the base and the tuned model on the held-out set with the same greedy
   sampler: perplexity, ROUGE-L, keyword coverage and house-style adherence.
3. Write <out>/results.json, <out>/results.md and <out>/loss_curve.png.

This script is the one writer of ``results.json``. Its schema (every key is written by
:func:`main`; a reader must accept ``null`` where a metric was not computed):

- ``command`` (str): what produced it; ``date`` (YYYY-MM-DD);
  ``machine``: ``{"description": str, "python": str}``
- ``config``: the run's ``RunConfig.to_dict()``; ``run_dir`` (str)
- ``train``: ``{"steps": int, "precision": "fp32"|"bf16"|"fp16", "precision_reason": str,
  "format", "records", "train_examples", "val_examples", "truncated", "dropped", "train_tokens"}``
- ``heldout``: ``{"path": str, "samples": int, "max_new_tokens": int, "precision": str}`` (the
  evaluation's autocast, resolved as training's ``auto``)
- ``perplexity``, ``rouge_l``, ``keyword_coverage``, ``house_style``: each
  ``{"base": float|null, "tuned": float|null, "change": float, "relative_change": float}``
  (the last two only when both sides exist; ``relative_change`` only when base is non-zero)
- ``final_eval_loss`` (float|null): the last validation loss of the run
- ``wall_s``: ``{"train": float, "evaluate": float, "total": float}`` seconds
- ``tokens_per_s`` (float): median training speed over the steps after the first
- ``examples``: ``[{"prompt": str, "base": str, "tuned": str}]``, the first five held-out answers
- ``commit`` (str|null): the git commit of the code that produced it (null outside a git checkout)
- ``previous`` (object|null): the figures of the results.json this run replaced
  (``date``, ``precision``, ``perplexity_tuned``, ``train_s``, ``total_s``, ``commit``), for the
  before/after note
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tunelab.core import curves, evaluate, models, runs, train  # noqa: E402
from tunelab.core.config import load_config  # noqa: E402
from tunelab.core.errors import UserError  # noqa: E402

SHOWCASE = "Explain photosynthesis."
EVALUATORS = ["perplexity", "rouge_l", "keyword_coverage", "house_style"]
EVAL_BATCH = 50


def loss_curve_png(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], color="#9ab", lw=1, label="training loss")
    if len(train_rows) > 4:  # a smoothed line reads better than the raw, noisy one
        smooth = curves.ema([r["loss"] for r in train_rows], 0.8)
        ax.plot([r["step"] for r in train_rows], smooth, color="#1f6feb", lw=2, label="training loss (smoothed)")
    ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", color="#d1242f",
            label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per answer token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metric(report: dict, evaluator: str, key: str) -> dict:
    """Base, tuned, change and relative change of one metric (core.evaluate.summary_rows, as the Evaluate page)."""
    row = next((r for r in evaluate.summary_rows(report) if (r["evaluator"], r["metric"]) == (evaluator, key)), None)
    if row is None:  # a side failed or lacks the metric: what there is, no change
        m = report["metrics"].get(evaluator, {})
        return {"base": m.get("base", {}).get(key), "tuned": m.get("tuned", {}).get(key)}
    out = {"base": row["base"], "tuned": row["tuned"], "change": row["change"]}
    if row["relative_change"] is not None:
        out["relative_change"] = row["relative_change"]
    return out


def write_markdown(results: dict, path: Path) -> None:
    p, s = results["perplexity"], results["house_style"]
    lines = [
        "# The default lesson: measured before and after",
        "",
        f"Produced by `{results['command']}` on {results['machine']['description']}, {results['date']}.",
        "Every figure below was measured in that run; rerun the command to reproduce it.",
        "",
        "## Settings",
        "",
        f"- model: `{results['config']['model']}`, method `{results['config']['method']}`, "
        f"lr {results['config']['lr']}, {results['config']['epochs']} epoch(s), batch {results['config']['batch_size']}"
        f" x grad_accum {results['config']['grad_accum']}, max_length {results['config']['max_length']}",
        f"- training: {results['train']['steps']} optimizer steps on {results['train']['train_examples']} examples "
        f"in {results['wall_s']['train']:.0f} s, median {results['tokens_per_s']:.0f} tokens/s, precision "
        f"{results['train'].get('precision')} ({results['train'].get('precision_reason')})",
        f"- held-out: {results['heldout']['samples']} prompts from `{results['heldout']['path']}`, greedy decoding, "
        f"up to {results['heldout']['max_new_tokens']} new tokens, evaluated in "
        f"{results['heldout'].get('precision') or 'fp32'} (generation and perplexity, both models alike)",
        "",
        "## Results",
        "",
        "| metric | base | tuned | change |",
        "|---|---|---|---|",
    ]
    for name, label, fmt in [("perplexity", "held-out perplexity (lower is better)", "{:.2f}"),
                             ("rouge_l", "ROUGE-L F1", "{:.3f}"),
                             ("keyword_coverage", "keyword coverage", "{:.3f}"),
                             ("house_style", "house-style adherence", "{:.0%}")]:
        m = results[name]
        if m.get("base") is None:
            lines.append(f"| {label} | - | - | not computed |")
            continue
        if name == "house_style":  # a share of answers: the change is in percentage points
            change = f"{m['change'] * 100:+.0f} points"
        else:
            change = f"{m['relative_change']:+.0%}" if "relative_change" in m else f"{m['change']:+.3f}"
        lines.append(f"| {label} | {fmt.format(m['base'])} | {fmt.format(m['tuned'])} | {change} |")
    lines += [
        "",
        f"Targets: perplexity falls by at least 30% — **{'met' if p.get('relative_change', 0) <= -0.30 else 'missed'}** "
        f"({p.get('relative_change', 0):+.0%}); house-style adherence rises from near zero to most answers — "
        f"**{'met' if (s.get('tuned') or 0) > 0.5 and (s.get('base') or 0) < 0.2 else 'missed'}** "
        f"({(s.get('base') or 0):.0%} -> {(s.get('tuned') or 0):.0%}).",
        "",
        f"Wall time: {results['wall_s']['train']:.0f} s training, {results['wall_s']['evaluate']:.0f} s evaluation, "
        f"{results['wall_s']['total']:.0f} s in all.",
        "",
        *_changes(results),
        "![loss curve](loss_curve.png)",
        "",
        "## Side by side",
        "",
    ]
    for ex in results["examples"]:
        lines += [f"### {ex['prompt']}", "", "**Base model**", "", _quote(ex["base"]), "",
                  "**Fine-tuned**", "", _quote(ex["tuned"]), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _changes(results: dict) -> list[str]:
    """Before/after against the results this run replaced: quality must hold while speed changes."""
    prev, p = results.get("previous"), results["perplexity"]
    if not prev or prev.get("perplexity_tuned") is None or p.get("tuned") is None:
        return []
    drift = p["tuned"] / prev["perplexity_tuned"] - 1
    return ["## Against the previous run", "",
            f"The previous results ({prev['date']}, precision {prev['precision']}): tuned perplexity "
            f"{prev['perplexity_tuned']:.2f}, {prev['train_s']:.0f} s training, {prev['total_s']:.0f} s in all. "
            f"This run ({results['train'].get('precision')}): {p['tuned']:.2f} ({drift:+.1%}; the goal is within "
            f"±3%), {results['wall_s']['train']:.0f} s training, {results['wall_s']['total']:.0f} s in all.",
            "", _code_change(prev.get("commit"), results.get("commit")),
            "", "Seconds from different days are not comparable on shared machines (the same step has run 25% "
            "faster or slower from one hour to the next); `docs/bench.md` compares speed within one run.", ""]


def _code_change(before: str | None, after: str | None) -> str:
    """Where to read what changed in the engine between the two results."""
    if before and after:
        return (f"The code: commit {before} then, {after} now; `git log {before.split('+')[0]}..{after.split('+')[0]} "
                "-- core plugins configs` lists what changed in the engine between them.")
    return f"The code now: commit {after or 'unknown'} (the previous results did not record theirs)."


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def previous_figures(path: Path) -> dict | None:
    """The headline figures of the results.json about to be replaced (None if there is none)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        return {"date": old["date"], "precision": old["train"].get("precision") or "fp32",
                "perplexity_tuned": old["perplexity"]["tuned"], "train_s": old["wall_s"]["train"],
                "total_s": old["wall_s"]["total"], "commit": old.get("commit")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect_results(args, cfg, run_dir: Path, result: dict, report: dict, samples: list, seconds: dict,
                    out: Path) -> dict:
    """The ``results.json`` document (schema in the module docstring) from the run and its evaluation."""
    rows = runs.read_metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    status = runs.read_status(run_dir)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    examples = [{"prompt": b["question"], "base": b["answer"], "tuned": a["answer"]}
                for b, a in zip(report["base"]["samples"][:5], report["tuned"]["samples"][:5])]
    return {
        "command": "make lesson" if not args.set and args.limit is None else
                   "python scripts/lesson.py " + " ".join(f"--set {s}" for s in args.set)
                   + (f" --limit {args.limit}" if args.limit else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"description": machine, "python": platform.python_version()},
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "train": {"steps": result["step"], "precision": status.get("precision"),
                  "precision_reason": status.get("precision_reason"), **status.get("data", {})},
        "heldout": {"path": str(Path(args.heldout).relative_to(REPO)) if Path(args.heldout).is_absolute()
                    and REPO in Path(args.heldout).parents else args.heldout,
                    "samples": len(samples), "max_new_tokens": args.max_new_tokens,
                    "precision": report["base"]["settings"].get("precision")},
        "perplexity": metric(report, "perplexity", "perplexity"),
        "rouge_l": metric(report, "rouge_l", "rouge_l"),
        "keyword_coverage": metric(report, "keyword_coverage", "keyword_coverage"),
        "house_style": metric(report, "house_style", "house_style"),
        "final_eval_loss": next((r["eval_loss"] for r in reversed(rows) if "eval_loss" in r), None),
        "wall_s": {k: round(v, 1) for k, v in seconds.items()},
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train_rows[1:] or train_rows),
        "examples": examples,
        "commit": git_commit(),
        "previous": previous_figures(out / "results.json"),
    }


def git_commit() -> str | None:
    """The checkout's commit (suffixed ``+changes`` when files differ from it), or None."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "core", "plugins", "tunelab", "scripts", "configs"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description="Run the default lesson and write docs/results.*")
    ap.add_argument("--config", default=str(REPO / "configs" / "lesson.yaml"))
    ap.add_argument("--heldout", default=str(REPO / "data" / "science_tutor_heldout.alpaca.json"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N held-out prompts only")
    ap.add_argument("--max-new-tokens", type=int, default=180)
    ap.add_argument("--out", default=str(REPO / "docs"))
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    cfg = load_config(args.config, args.set)
    os.chdir(REPO)  # data paths in the config are relative to the repository
    run_dir = runs.create_run(cfg, "lesson")
    print(f"[lesson] training into {run_dir}", flush=True)

    def echo(row):
        if "eval_loss" in row:
            print(f"[lesson] step {row['step']}: validation loss {row['eval_loss']:.3f}", flush=True)
        elif row["step"] % 5 == 0:
            print(f"[lesson] step {row['step']}: loss {row['loss']:.3f} ({row['tokens_per_s']:.0f} tokens/s)",
                  flush=True)

    result = train.train(cfg, run_dir, echo=echo)
    if result["state"] != "finished":
        print(f"[lesson] training {result['state']}: {result['error']}", file=sys.stderr)
        return 1
    train_s = time.time() - started

    samples = evaluate.load_samples(args.heldout, limit=args.limit)
    # the showcase prompt first, so a --limit run still shows it
    samples.sort(key=lambda s: s["prompt"][-1]["content"] != SHOWCASE)
    print(f"[lesson] evaluating base and tuned on {len(samples)} held-out prompts", flush=True)
    t = time.time()
    base = models.load_model(cfg.model)
    tuned = models.load_model(str(run_dir / "final"))

    def progress(i, n):
        if i % 10 == 0 or i == n:
            print(f"[lesson] answered {i}/{n}", flush=True)

    # 50 prompts a batch (all of the held-out set): decoding on a CPU is bound by reading the weights,
    # so fewer, wider batches answer the same prompts sooner (the base model's 50 answers on the
    # 2-core machine: 53 s at 25 a batch, 37 s at 50; the same tokens)
    report = evaluate.compare(base, tuned, samples, evaluators=EVALUATORS, max_new_tokens=args.max_new_tokens,
                              max_length=cfg.max_length, progress=progress, batch_size=EVAL_BATCH)
    evaluate.save_report(run_dir, report)
    eval_s = time.time() - t

    seconds = {"train": train_s, "evaluate": eval_s, "total": time.time() - started}
    results = collect_results(args, cfg, run_dir, result, report, samples, seconds, out)
    rows = runs.read_metrics(run_dir)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    loss_curve_png(rows, out / "loss_curve.png", f"{cfg.method} fine-tuning, lr {cfg.lr:g}")
    write_markdown(results, out / "results.md")
    print(json.dumps({k: results[k] for k in ("perplexity", "house_style", "rouge_l", "keyword_coverage",
                                               "wall_s", "tokens_per_s")}, indent=2))
    print(f"[lesson] wrote {out / 'results.md'}, results.json and loss_curve.png")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
